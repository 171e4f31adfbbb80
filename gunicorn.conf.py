"""gunicorn settings: one worker (one model in memory), a few threads, 60 s per request."""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# gunicorn's asyncio worker parses requests and buffers whole bodies before a thread sees them, so slow or
# idle clients hold no thread (app/front.py; README "Slow clients").
worker_class = "app.front.BufferedWsgiWorker"
# Threads run only fully received requests: the one running inference, MAX_QUEUE (8) waiting uploads, and
# spares so that /health and /status answer at once under load. Waiting requests hold only their spooled upload.
threads = int(os.environ.get("GUNICORN_THREADS", "12"))
timeout = 60
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = 50
accesslog = "-"
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
