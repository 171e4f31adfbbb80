"""gunicorn settings: one worker (one model in memory), a few threads, 60 s per request."""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_class = "gthread"
# Enough threads for the one running inference, MAX_QUEUE (8) waiting uploads, and spares so that
# /health and /status answer at once under load. Waiting requests hold only their spooled upload.
threads = int(os.environ.get("GUNICORN_THREADS", "12"))
timeout = 60
graceful_timeout = 30
keepalive = 5
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = 50
accesslog = "-"
# One line per request, key=value: the X-Request-ID the app set on the response (echoed or generated),
# method, path as sent (still percent-encoded, so it cannot break the line), status, response bytes, time in ms.
access_log_format = (
    "request_id=%({x-request-id}o)s remote=%(h)s method=%(m)s path=%({raw_uri}e)s status=%(s)s "
    "bytes=%(b)s duration_ms=%(M)s"
)
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info")
