"""gunicorn settings: one worker (one model in memory), a few threads, a quiet start.

No setting here limits a single request's time (see `timeout`): a request is bounded by QUEUE_TIMEOUT_S
for its wait and by the inference itself (docs/operations.md, Time limits).
"""
import os

bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# gunicorn's asyncio worker parses requests and buffers whole bodies before a thread sees them, so slow or
# idle clients hold no thread (app/front.py; README "Slow clients").
worker_class = "app.front.BufferedWsgiWorker"
# Threads run only fully received requests: the one running inference, MAX_QUEUE (8) waiting uploads, and
# spares so that /health and /status answer at once under load. Waiting requests hold only their spooled upload.
threads = int(os.environ.get("GUNICORN_THREADS", "12"))
# The arbiter restarts a worker whose heartbeat stops for this long (a wedged process). It is not a
# per-request limit: a threaded worker keeps beating while its threads serve slow requests.
timeout = 60
# On SIGTERM, in-flight requests get this long to finish; railway.toml's drainingSeconds covers it.
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
# gunicorn 25.1+ opens a control socket (for `gunicornc`) under $XDG_RUNTIME_DIR or $HOME; in the image
# $HOME is /nonexistent and every start would log an ERROR. One worker in a container needs no control.
control_socket_disable = True
