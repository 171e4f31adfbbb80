"""The HTTP front: gunicorn's own asyncio (ASGI) worker, with the Flask app behind a2wsgi's thread pool.

gunicorn's gthread worker hands a connection to a thread as soon as its first byte arrives, and that
thread then blocks reading the rest of the headers and the body: a dozen clients that send a byte every
few seconds hold every thread, and /api/bg/health stops answering. Here the event loop parses every
request, and BufferedBodies reads each whole body (spooled to a temporary file in UPLOAD_FOLDER past
512 KB) before a thread is involved. A slow, stalled or idle client costs a coroutine and a few KB; the
threads only ever run requests that have fully arrived. The HTTP parsing is gunicorn's, the WSGI
bridge is a2wsgi's: this module only buffers bodies and renders gunicorn's own errors as JSON.

gunicorn.conf.py selects it: worker_class = "app.front.BufferedWsgiWorker".
"""
from __future__ import annotations

import asyncio
import json
import tempfile
from http import HTTPStatus
from typing import Any, Awaitable, Callable

from a2wsgi import WSGIMiddleware
from gunicorn.asgi import protocol as gunicorn_protocol
from gunicorn.workers import gasgi

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SPOOL_IN_MEMORY_BYTES = 512 * 1024
REPLAY_CHUNK_BYTES = 64 * 1024


class BufferedBodies:
    """ASGI middleware: receive the whole request body before calling the app, then replay it.

    A body whose Content-Length is over `max_body` is not read: the app sees the header and answers 413
    itself. A chunked body is read up to max_body + 1 bytes and handed on with that length, with the
    same result. A body that has not fully arrived after `body_timeout_s` gets 408.
    """

    def __init__(self, app: ASGIApp, max_body: int | None, spool_dir: str | None, body_timeout_s: float) -> None:
        self.app = app
        self.max_body = max_body
        self.spool_dir = spool_dir
        self.body_timeout_s = body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and self.max_body is not None and declared > self.max_body:
            await self.app(scope, receive, send)
            return
        with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY_BYTES, dir=self.spool_dir) as spool:
            try:
                received = await asyncio.wait_for(self._receive_body(receive, spool), self.body_timeout_s)
            except asyncio.TimeoutError:
                await _send_json(send, 408, f"the request body did not arrive within {self.body_timeout_s:.0f} s")
                return
            if received is None:
                return  # the client went away
            spool.seek(0)
            await self.app(_with_length(scope, received), _replay(spool, receive), send)

    async def _receive_body(self, receive: Receive, spool: Any) -> int | None:
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            spool.write(chunk)
            total += len(chunk)
            if self.max_body is not None and total > self.max_body:
                return total  # the app refuses it by its length without reading it
            if not message.get("more_body", False):
                return total


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _with_length(scope: Scope, length: int) -> Scope:
    """The scope with the buffered body's length: a chunked request reaches the app like any other."""
    headers = [(name, value) for name, value in scope.get("headers", [])
               if name.lower() not in (b"content-length", b"transfer-encoding")]
    headers.append((b"content-length", str(length).encode("ascii")))
    return {**scope, "headers": headers}


def _replay(spool: Any, receive: Receive) -> Receive:
    """An ASGI receive that hands out the spooled body, then passes the client's disconnect through."""
    finished = False

    async def replay() -> Message:
        nonlocal finished
        if finished:
            return await receive()
        chunk = spool.read(REPLAY_CHUNK_BYTES)
        more = len(chunk) == REPLAY_CHUNK_BYTES
        finished = not more
        return {"type": "http.request", "body": chunk, "more_body": more}

    return replay


async def _send_json(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class JsonErrorProtocol(gunicorn_protocol.ASGIProtocol):
    """gunicorn's HTTP protocol, with the errors it answers itself (malformed requests, oversized headers,
    Content-Length with Transfer-Encoding...) as `{"error": ...}` JSON like every other error."""

    def _send_error_response(self, status: int, message: str, extra_headers: Any = ()) -> None:
        body = json.dumps({"error": f"{message}".strip() or "bad request"}).encode()
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "Error"
        extra = "".join(f"{name}: {value}\r\n" for name, value in extra_headers)
        head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n{extra}Connection: close\r\n\r\n")
        self._safe_write(head.encode("latin-1"))
        self._safe_write(body)


class BufferedWsgiWorker(gasgi.ASGIWorker):
    """gunicorn's ASGI worker serving a WSGI app: bodies buffered first, then run on `threads` threads."""

    @classmethod
    def check_config(cls, cfg: Any, log: Any) -> None:
        """The ASGI worker warns that `threads` is unused; here it sizes the WSGI thread pool."""

    def init_process(self) -> None:
        gasgi.ASGIProtocol = JsonErrorProtocol  # the worker creates its connections with this name
        super().init_process()

    def load_wsgi(self) -> None:
        wsgi_app = self.app.wsgi()
        flask_config = getattr(wsgi_app, "config", {})
        settings = flask_config.get("PIXPORT")
        spool_dir = str(settings.upload_folder) if settings is not None else None
        bridge = WSGIMiddleware(wsgi_app, workers=max(1, self.cfg.threads))
        self.asgi = BufferedBodies(bridge, flask_config.get("MAX_CONTENT_LENGTH"), spool_dir, float(self.cfg.timeout))
