"""gunicorn settings: one worker (one model in memory), a few threads, a quiet start.

No setting here limits a single request's time (see `timeout`): a request is bounded by QUEUE_TIMEOUT_S
for its wait and by the inference itself (docs/operations.md, Time limits). The front's bounds on what a
client may hold (connections, deadlines, buffers) are environment settings read by app/config.py:
MAX_CONNECTIONS, HEADER_TIMEOUT_S, BODY_TIMEOUT_S, SEND_TIMEOUT_S, BODY_MEMORY_MB, SPOOL_MAX_MB,
RESPONSE_MEMORY_MB, SPOOL_WAIT_S (docs/operations.md, "Slow clients: the HTTP front").
"""
import os


def _somaxconn(default: int = 2048) -> int:
    """The kernel's cap on a listener's accept queue (net.core.somaxconn, per network namespace)."""
    try:
        with open("/proc/sys/net/core/somaxconn") as limit:
            return int(limit.read())
    except (OSError, ValueError):
        return default


bind = f"0.0.0.0:{os.environ.get('PORT', '5000')}"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# The accept queue as deep as the kernel allows (gunicorn's default is 2048): a burst of connections (a flood
# reconnecting) queues rather than having handshakes' final ACKs dropped, which a health probe waits out in
# SYN-ACK retransmits (1 s, then 3 s).
backlog = max(2048, _somaxconn())
# uvicorn's gunicorn worker parses requests on an event loop; app/front.py buffers whole bodies before a
# thread sees them and hands responses back to the loop, so slow or idle clients hold no thread.
worker_class = "app.front.FrontWorker"
# Threads run only fully received requests: the one running inference, MAX_QUEUE (8) waiting uploads, and
# spares so that /status and the watchdog's probe answer at once under load. Waiting requests hold only their spooled upload.
threads = int(os.environ.get("GUNICORN_THREADS", "12"))
# The watchdog: the worker beats only when a /api/bg/health request run through its main thread pool has
# answered (app/front.py, probed every 2 s), so the arbiter replaces a worker that cannot serve (every
# thread stuck, a deadlock, a blocked event loop) within `timeout` + 2 s. It is not a per-request limit:
# the probe needs one free thread, and GUNICORN_THREADS keeps spares beyond the inference queue. Clients'
# health checks have two threads of their own.
timeout = 20
# On SIGTERM, in-flight requests get this long to finish; railway.toml's drainingSeconds covers it.
graceful_timeout = 30
# Idle time allowed between two requests on one connection (uvicorn's timeout_keep_alive).
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
