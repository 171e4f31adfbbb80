"""The HTTP front: uvicorn's gunicorn worker (h11) with the Flask app behind a2wsgi's thread pool.

A thread only ever runs a request that has fully arrived, and never waits on a client: bodies are read
on the event loop first (BufferedBodies), and responses are handed to the event loop, which writes them
as fast as the client reads (Outbox). Every resource a client can hold has a bound (Limits):

- connections: past MAX_CONNECTIONS a new connection closes the one that has waited longest for a
  request (idle, or a head still arriving), as nginx reuses idle connections when it runs out; if every
  connection has a request in flight, the new one's request gets 503 with Retry-After, except
  GET /api/bg/health, which a platform's probe must still get through a connection flood;
- header deadline: a connection whose request head has not arrived HEADER_TIMEOUT_S after it opened is
  reset (uvicorn's keep-alive timeout covers the time between requests; h11 bounds the head's size);
  displaced connections are reset too (SO_LINGER 0: no FIN exchange, no TIME_WAIT);
- body deadline: a body not fully arrived BODY_TIMEOUT_S after its head gets 408;
- request bodies: small ones in memory up to BODY_MEMORY_MB in total, the rest in anonymous temp files in
  UPLOAD_FOLDER up to SPOOL_MAX_MB in total, reserved by Content-Length before a byte is read; an upload
  that does not fit waits, unread, up to SPOOL_WAIT_S for room, then gets 503 with Retry-After (a chunked
  body past either total at once). Sockets are read READ_BYTES at a time, and not past a request head
  until the app asks for the body, so what no budget counts is about one read per connection; a request refused while its body is arriving is answered, then the rest is discarded for
  LINGER_S before the connection closes (a close on unread data would reset it);
- responses waiting for slow readers: RESPONSE_MEMORY_MB in total; past it the connection whose response has
  waited longest is aborted to make room (only the newest waiting one is refused if none waited longer);
- send deadline: the kernel's send buffer is capped (SEND_BUFFER_BYTES); a connection whose write buffer has not drained (below the low-water mark) within
  SEND_TIMEOUT_S of filling, or whose response's tail has not left the buffer SEND_TIMEOUT_S after the
  response ended, is aborted, which releases every writer waiting on it (nginx's send_timeout).

The worker's heartbeat means "can serve": it is sent only when a /api/bg/health request, run through
BufferedBodies and the main thread pool, has completed since the last one. A worker whose threads are all
stuck (or whose event loop is) stops beating, and gunicorn's arbiter replaces it after `timeout`. Clients'
health checks run on HEALTH_THREADS threads of their own, so that they never queue behind other requests,
hand their answer to the event loop once (WholeResponse), and answer 503 once the watchdog's probe has
waited STUCK_AFTER_S.

gunicorn.conf.py selects it: worker_class = "app.front.FrontWorker".
"""
from __future__ import annotations

import asyncio
import collections
import gc
import io
import json
import logging
import socket
import struct
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from types import SimpleNamespace
from typing import IO, Any, Awaitable, Callable

import h11
from a2wsgi import WSGIMiddleware
from a2wsgi.wsgi import Body, build_environ
from werkzeug.wsgi import FileWrapper
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn_worker import UvicornWorker

from app.config import BODY_IN_MEMORY_BYTES, Config, raise_open_files_limit
from app.heap import release_memory_to_os

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MB = 1024 * 1024
REPLAY_CHUNK_BYTES = 64 * 1024
# A file response (send_file: the Swagger bundle, the page's assets) in blocks of this size rather than
# werkzeug's 8 KB: each block crosses from a thread to the event loop, and a 1 MB file in 128 crossings
# kept the threads busy long enough under slowhttptest -X to delay health by seconds.
FILE_CHUNK_BYTES = 256 * 1024
RETRY_AFTER_S = 5
# A request head's size: h11 refuses an incomplete head past it (its own default); the Front refuses a
# complete one past it with 431 (h11 accepts a longer head that arrives in one read).
MAX_HEAD_BYTES = 16 * 1024
# The kernel's send buffer per connection (SO_SNDBUF, like nginx's `listen ... sndbuf=`): left to autotuning,
# a client that stops reading can park megabytes per connection in kernel memory, which a container's
# memory limit counts, and the send deadline would never see a full buffer.
SEND_BUFFER_BYTES = 64 * 1024
# One read from a socket (asyncio's default is 256 KB). Reading stops once a request head has arrived, until
# the request is admitted and its body is asked for, so a connection holds at most about one read that no
# budget counts: 1,000 stalled uploads hold ~16 MB here, where 256 KB reads held 400 MB (docs/performance.md).
READ_BYTES = 16 * 1024
# After refusing a request whose body is still arriving, the connection reads and discards for up to this
# long before it closes (nginx's lingering close): closing with unread data would send a reset, which can
# destroy the answer before the client reads it.
LINGER_S = 2.0
DRAIN_READ_BYTES = 256 * 1024  # reads while discarding: nothing is kept, so fewer and larger is cheaper
RESET_LINGER = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
# Lingering is itself a resource (reading what a flood sends costs CPU): past this many connections
# lingering at once, a refused connection is closed at once instead.
MAX_LINGERING = 64
PROBE_INTERVAL_S = 2.0
TRIM_AFTER_CONNECTIONS = 200  # a surge of at least this many connections is followed by a malloc_trim
# The cycle collector's full collections walk every live connection's objects (about 21 each) on the event
# loop: 0.2-0.4 s at 16,384 connections, one every 2-3 s while a flood churns them (docs/performance.md,
# "The collector waits during a flood"). From FLOOD_CONNECTIONS open connections on, automatic full collections are off
# and the watchdog runs one every FLOOD_FULL_COLLECT_S; young collections go on as before.
FLOOD_CONNECTIONS = 2000
FLOOD_FULL_COLLECT_S = 60.0
NO_AUTOMATIC_FULL = 1 << 30  # young collections before a full one: never, in practice
CONNECTION = "pixport.connection"  # the scope["state"] key that carries the request's connection
HEALTH_PATH = "/api/bg/health"
# Threads that run only bodiless GET/HEAD /api/bg/health from clients, so a platform's probe never queues
# behind a flood of other requests for the GUNICORN_THREADS pool. The watchdog's own probe goes through
# that main pool, so a worker whose main threads are stuck still stops beating and is replaced.
HEALTH_THREADS = 2
# Past this wait for the watchdog's probe, the main pool counts as stuck and client health checks get 503
# (the worker is about to be replaced) rather than a 200 from the health threads.
STUCK_AFTER_S = 5.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    """The front's bounds, from Config (app/config.py documents each)."""

    max_connections: int
    header_timeout_s: float
    body_timeout_s: float
    send_timeout_s: float
    body_memory_bytes: int
    spool_bytes: int
    response_memory_bytes: int
    max_body: int | None
    # An upload whose declared length does not fit the spool waits this long for room, unread and holding
    # no thread, before its 503: room that frees meanwhile serves it, and a flood that retries as soon as
    # it is refused costs the event loop (accept, parse, answer, close) a fraction as often.
    spool_wait_s: float = 0.0

    @classmethod
    def from_config(cls, config: Config, max_body: int | None) -> "Limits":
        return cls(config.max_connections, config.header_timeout_s, config.body_timeout_s, config.send_timeout_s,
                   config.body_memory_mb * MB, config.spool_max_mb * MB, config.response_memory_mb * MB, max_body,
                   config.spool_wait_s)


class Budget:
    """A total shared by every connection of the worker (used only on the event loop thread)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.used = 0
        self.peak = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[bool]]] = collections.deque()

    def take(self, amount: int) -> bool:
        if self.used + amount > self.capacity:
            return False
        self.used += amount
        self.peak = max(self.peak, self.used)
        return True

    async def take_within(self, amount: int, seconds: float) -> bool:
        """Take `amount` now, or wait up to `seconds` for it in turn (first come, first served)."""
        if not self._waiters and self.take(amount):
            return True
        if amount > self.capacity:
            return False
        loop = asyncio.get_running_loop()
        waiter = (amount, loop.create_future())
        self._waiters.append(waiter)
        timer = loop.call_later(seconds, self._expire, waiter)
        try:
            return await waiter[1]
        except asyncio.CancelledError:
            if waiter[1].done() and not waiter[1].cancelled() and waiter[1].result():
                self.give(amount)  # granted as the waiting task was cancelled
            else:
                self._expire(waiter)
            raise
        finally:
            timer.cancel()

    def give(self, amount: int) -> None:
        self.used -= amount
        self._grant()

    def _grant(self) -> None:
        while self._waiters and self.take(self._waiters[0][0]):
            self._waiters.popleft()[1].set_result(True)

    def _expire(self, waiter: tuple[int, asyncio.Future[bool]]) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            if not waiter[1].done():
                waiter[1].set_result(False)
            self._grant()  # a smaller request behind it may fit


class Refused(Exception):
    """A bound was reached: the client gets `status` with Retry-After."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- the connection


class GuardedH11Protocol(H11Protocol, asyncio.BufferedProtocol):
    """uvicorn's h11 protocol plus the connection bound, the header deadline and the send deadline.

    Subclassed per worker with its Limits and its own sets of connections (guarded_protocol). Each
    request's scope["state"] carries the connection, so the ASGI layers can see whether it may write and
    abort it. As a BufferedProtocol it chooses how much each read takes, on asyncio's loop and uvloop
    alike, into one buffer shared by the worker's connections (the loop reads one socket at a time and
    the bytes are copied out at once).
    """

    limits: Limits
    # The worker's connections with no request in flight (a head not yet complete, or idle between
    # requests with nothing left to send), oldest first: the ones a new connection may displace.
    waiting: dict["GuardedH11Protocol", None]
    lingering: set["GuardedH11Protocol"]  # the worker's connections in a lingering close
    open: set["GuardedH11Protocol"]  # all of the worker's connections
    displaced: set["GuardedH11Protocol"]  # closed to make room, not yet gone
    read_buffer: memoryview  # DRAIN_READ_BYTES, shared by the worker's connections

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.overloaded = False
        self.writing_paused = False
        self._header_timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self.draining = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        if len(self.connections) - len(self.displaced) > self.limits.max_connections:
            self._displace_oldest_waiting()
        # Displaced connections close on a later turn of the loop: they no longer count.
        self.overloaded = len(self.connections) - len(self.displaced) > self.limits.max_connections
        self.waiting[self] = None
        self.open.add(self)
        self.app_state = {**self.app_state, CONNECTION: self}
        self._header_timer = self.loop.call_later(self.limits.header_timeout_s, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._header_timer, self._send_timer, self._linger_timer):
            if timer is not None:
                timer.cancel()
        self._header_timer = self._send_timer = self._linger_timer = None
        self.writing_paused = False
        self.waiting.pop(self, None)
        self.lingering.discard(self)
        self.displaced.discard(self)
        self.open.discard(self)
        super().connection_lost(exc)
        self.app_state = {}  # it named this connection: without the cycle, refcounting frees it at once
        # CPython 3.11's socket transport keeps its read callback as a bound method of itself, a cycle that
        # only the collector frees (gone in 3.12, gh-100348); it reads no more once the connection is lost.
        if getattr(self.transport, "_read_ready_cb", None) is not None:
            self.transport._read_ready_cb = None

    def _displace_oldest_waiting(self) -> None:
        """Close the connection that has waited longest for a request, if there is one."""
        while self.waiting:
            oldest = next(iter(self.waiting))
            del self.waiting[oldest]
            if not oldest.transport.is_closing():
                log.debug("closing %s: %d connections, it waited longest", oldest.client, len(self.connections))
                self.displaced.add(oldest)
                oldest.reset()
                return

    def reset(self) -> None:
        """Close with a reset (SO_LINGER 0): no FIN exchange and no TIME_WAIT for a connection we drop."""
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_LINGER)
            except OSError:
                pass  # already gone
        self.transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.read_buffer if self.draining else self.read_buffer[:READ_BYTES]

    def buffer_updated(self, nbytes: int) -> None:
        if not self.draining:  # lingering: what arrives is discarded unread
            self.data_received(bytes(self.read_buffer[:nbytes]))

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is in flight: read its body only when the app asks for it (uvicorn's receive()
            # resumes reading), so a request refused by a budget or the bound reads nothing more.
            self.flow.pause_reading()
            self.waiting.pop(self, None)
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.cycle is None and not self.transport.is_closing():
            log.debug("closing %s: no request head within %.0f s", self.client, self.limits.header_timeout_s)
            self.reset()

    def pause_writing(self) -> None:
        super().pause_writing()
        self.writing_paused = True
        self._arm_send_timer()

    def resume_writing(self) -> None:
        super().resume_writing()
        self.writing_paused = False
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def on_response_complete(self) -> None:
        if self.transport.get_write_buffer_size():
            self._arm_send_timer()  # the response's tail must reach the client too, even on close
        super().on_response_complete()
        if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
            self._linger()  # answered before its body arrived (a refusal, a 413): no keep-alive after it
        if (not self.transport.is_closing() and not self.draining and self.cycle is not None
                and self.cycle.response_complete and not self.transport.get_write_buffer_size()):
            self.waiting[self] = None  # idle until its next request (uvicorn's keep-alive timeout runs)

    def _linger(self) -> None:
        """Close after a final answer without a reset: half-close, then discard what arrives for LINGER_S
        (unparsed, in large reads: a flood of refused uploads costs little CPU)."""
        self.draining = True
        self.waiting.pop(self, None)
        if len(self.lingering) >= MAX_LINGERING:
            self.transport.close()
            return
        self.lingering.add(self)
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self.transport.resume_reading()
        self._linger_timer = self.loop.call_later(LINGER_S, self.transport.close)

    def _arm_send_timer(self) -> None:
        if self._send_timer is None:
            self._send_timer = self.loop.call_later(self.limits.send_timeout_s, self._send_timeout)

    def _send_timeout(self) -> None:
        self._send_timer = None
        if self.writing_paused or self.transport.get_write_buffer_size():
            self.abort(f"the client read nothing for {self.limits.send_timeout_s:.0f} s")

    def abort(self, why: str) -> None:
        """Drop the connection now (no flush): connection_lost releases whoever waits to write to it."""
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            log.debug("aborting %s: %s", self.client, why)
            self.transport.abort()

    def send_400_response(self, msg: str) -> None:
        """h11's refusals (malformed requests, an oversized head) as JSON, like every other error."""
        pending, _ = self.conn.trailing_data
        if len(pending) > MAX_HEAD_BYTES:
            status, message = 431, "the request's header fields are too large"
        else:
            status, message = 400, "invalid HTTP request"
        body = json.dumps({"error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=status, headers=headers), h11.Data(data=body), h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self._linger()


def guarded_protocol(limits: Limits) -> type[GuardedH11Protocol]:
    registers = {"waiting": {}, "lingering": set(), "open": set(), "displaced": set(),
                 "read_buffer": memoryview(bytearray(DRAIN_READ_BYTES))}
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits, **registers})


# --------------------------------------------------------------------------- responses


class Outbox:
    """An ASGI send that never makes the app wait for the client.

    While the connection can take data, messages go straight to uvicorn. Once it is backed up, they wait
    here, counted against the worker's response budget, and a task writes them as the client reads. If
    the budget is spent, the response waiting longest is aborted to make room (_take), or this one when it
    is the one; after that, its messages are dropped, so the thread that produces them finishes at once.
    """

    def __init__(self, send: Send, conn: GuardedH11Protocol, budget: Budget,
                 backed_up: dict["Outbox", float]) -> None:
        self._send = send
        self._conn = conn
        self._budget = budget
        self._backed_up = backed_up  # every Outbox of the worker with messages waiting -> since when
        self._queue: list[tuple[Message, int]] = []
        self._writer: asyncio.Task | None = None
        self.dropped = False
        self.status: int | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self.sent = 0

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status, self.headers = message["status"], list(message.get("headers", []))
        if self.dropped:
            return
        if self._writer is None and not self._conn.writing_paused:
            await self._deliver(message)
            return
        size = len(message.get("body", b""))
        if not self._take(size):
            self._drop(f"the response buffer ({self._budget.capacity // MB} MB for all clients) is full")
            return
        self._queue.append((message, size))
        if self._writer is None:
            self._backed_up.setdefault(self, time.monotonic())
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def _take(self, size: int) -> bool:
        """Room in the shared budget; when it is spent, the response backed up the longest (a client that has
        stopped reading) is aborted to make it, as MAX_CONNECTIONS displaces the longest-idle connection, so
        slow readers holding the budget cannot make every other answer fail."""
        while not self._budget.take(size):
            mine = self._backed_up.get(self, time.monotonic())
            older = [(since, box) for box, since in self._backed_up.items() if box is not self and since < mine]
            if not older:
                return False
            min(older, key=lambda pair: pair[0])[1]._drop("displaced: the response buffer is full and this "
                                                          "client has read least recently")
        return True

    async def _deliver(self, message: Message) -> None:
        await self._send(message)
        self.sent += len(message.get("body", b""))

    async def _write(self) -> None:
        try:
            while self._queue and not self.dropped:
                message, size = self._queue.pop(0)
                self._budget.give(size)
                await self._deliver(message)
        finally:
            self._release()
            self._writer = None

    def _drop(self, why: str) -> None:
        self.dropped = True
        self._release()
        self._conn.abort(why)

    def _release(self) -> None:
        self._backed_up.pop(self, None)
        self._budget.give(sum(size for _, size in self._queue))
        self._queue.clear()

    async def flushed(self) -> None:
        """Wait (as a coroutine, not a thread) until every message has been written or dropped."""
        while self._writer is not None:
            await asyncio.shield(self._writer)


# --------------------------------------------------------------------------- request bodies


class _Body:
    """One request body: in memory within the memory budget, else in an anonymous temp file."""

    def __init__(self, memory: Budget, disk: Budget, spool_dir: str | None) -> None:
        self._memory, self._disk, self._spool_dir = memory, disk, spool_dir
        self.file: IO[bytes] = io.BytesIO()
        self.size = 0
        self._in_memory = 0
        self._on_disk = 0
        self._reserved = 0  # disk reserved up front from Content-Length

    async def reserve(self, declared: int, wait_s: float) -> None:
        """A large declared body goes straight to disk: reserve all of it before reading a byte, waiting up
        to `wait_s` for room (unread, the body waits in the kernel's buffers), or refuse it."""
        if declared <= BODY_IN_MEMORY_BYTES and self._memory.take(declared):
            self._in_memory = declared
            self._reserved = -1  # memory reserved: writes need no more
            return
        if not await self._disk.take_within(declared, wait_s):
            raise Refused(503, "the server is receiving too many uploads; try again shortly")
        self._reserved = self._on_disk = declared
        self._to_disk()

    def write(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self._reserved:
            self.file.write(chunk)
            return
        if isinstance(self.file, io.BytesIO):
            if self.size <= BODY_IN_MEMORY_BYTES and self._memory.take(len(chunk)):
                self._in_memory += len(chunk)
                self.file.write(chunk)
                return
            self._to_disk()
        if not self._disk.take(len(chunk)):
            raise Refused(503, "the server is receiving too many uploads; try again shortly")
        self._on_disk += len(chunk)
        self.file.write(chunk)

    def _to_disk(self) -> None:
        held = self.file.getvalue() if isinstance(self.file, io.BytesIO) else b""
        if held and not self._disk.take(len(held)):
            raise Refused(503, "the server is receiving too many uploads; try again shortly")
        self._on_disk += len(held)
        self.file = tempfile.TemporaryFile(dir=self._spool_dir)
        self.file.write(held)
        self._memory.give(self._in_memory)
        self._in_memory = 0

    def close(self) -> None:
        self.file.close()
        self._memory.give(self._in_memory)
        self._disk.give(self._on_disk)
        self._in_memory = self._on_disk = 0


class BufferedBodies:
    """ASGI middleware: receive the whole request body before calling the app, then replay it.

    A body whose Content-Length is over `max_body` is not read: the app sees the header and answers 413
    itself. A chunked body is read up to max_body + 1 bytes and handed on with that length, with the
    same result. A body that has not fully arrived after `body_timeout_s` gets 408; one that does not fit
    the worker's budgets gets 503 with Retry-After.
    """

    def __init__(self, app: ASGIApp, limits: Limits, spool_dir: str | None, memory: Budget, disk: Budget) -> None:
        self.app = app
        self.limits = limits
        self.spool_dir = spool_dir
        self.memory = memory
        self.disk = disk

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        declared = _content_length(scope)
        max_body = self.limits.max_body
        if scope["type"] != "http" or declared == 0 or (
                declared is not None and max_body is not None and declared > max_body):
            await self.app(scope, receive, send)
            return
        body = _Body(self.memory, self.disk, self.spool_dir)
        try:
            try:
                if declared is not None:
                    await body.reserve(declared, self.limits.spool_wait_s)
                received = await asyncio.wait_for(self._receive_body(receive, body), self.limits.body_timeout_s)
            except asyncio.TimeoutError:
                await send_json(send, 408,
                                f"the request body did not arrive within {self.limits.body_timeout_s:.0f} s")
                return
            except Refused as refused:
                await send_json(send, refused.status, refused.message, retry_after=RETRY_AFTER_S, close=False)
                return
            if received is None:
                return  # the client went away
            body.file.seek(0)
            await self.app(_with_length(scope, received), _replay(body.file, receive), send)
        finally:
            body.close()

    async def _receive_body(self, receive: Receive, body: _Body) -> int | None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body.write(message.get("body", b""))
            if self.limits.max_body is not None and body.size > self.limits.max_body:
                return body.size  # the app refuses it by its length without reading it
            if not message.get("more_body", False):
                return body.size


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


def _replay(spool: IO[bytes], receive: Receive) -> Receive:
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


async def send_json(send: Send, status: int, message: str, retry_after: int | None = None,
                    close: bool = True) -> None:
    """A JSON error; close=False keeps the connection, so a body still arriving is discarded, not reset."""
    body = json.dumps({"error": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    if retry_after is not None:
        headers.append((b"retry-after", str(retry_after).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------- the stack


AccessLog = Callable[[Scope, Outbox, float], None]


def _is_health(scope: Scope) -> bool:
    """A bodiless GET or HEAD of /api/bg/health: what a platform's health probe sends."""
    if scope["path"] != HEALTH_PATH or scope["method"] not in ("GET", "HEAD"):
        return False
    headers = dict((name.lower(), value) for name, value in scope.get("headers", []))
    return b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") == b"0"


class Front:
    """The ASGI app uvicorn serves: the connection bound, the Outbox, BufferedBodies, then a2wsgi."""

    def __init__(self, wsgi_app: Any, threads: int, limits: Limits, spool_dir: str | None,
                 access_log: AccessLog | None = None) -> None:
        self.limits = limits
        self.memory = Budget(limits.body_memory_bytes)
        self.disk = Budget(limits.spool_bytes)
        self.responses = Budget(limits.response_memory_bytes)
        self.backed_up: dict[Outbox, float] = {}  # the Outboxes waiting for their clients (Outbox._take)
        self.bodies = BufferedBodies(WSGIMiddleware(_with_file_wrapper(wsgi_app), workers=threads), limits, spool_dir,
                                     self.memory, self.disk)
        self.health = WholeResponse(wsgi_app, HEALTH_THREADS)
        self.access_log = access_log
        self.probe_since: float | None = None  # when the pending watchdog probe started

    def stuck(self) -> bool:
        """The watchdog's probe has waited over STUCK_AFTER_S for the main pool."""
        return self.probe_since is not None and time.monotonic() - self.probe_since > STUCK_AFTER_S

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = scope.get("state", {}).get(CONNECTION)
        if scope["type"] != "http" or conn is None:
            await self.bodies(scope, receive, send)
            return
        started = time.monotonic()
        outbox = Outbox(send, conn, self.responses, self.backed_up)
        names = [name.lower() for name, _ in scope.get("headers", [])]
        health = _is_health(scope)
        try:
            if conn.overloaded and not health:
                await send_json(outbox.send, 503, "the server has too many open connections; try again shortly",
                                retry_after=RETRY_AFTER_S, close=False)
            elif sum(len(name) + len(value) + 4 for name, value in scope.get("headers", [])) > MAX_HEAD_BYTES:
                await send_json(outbox.send, 431, "the request's header fields are too large")
            elif health and self.stuck():
                await send_json(outbox.send, 503, "the server cannot serve requests now (its threads are stuck); "
                                "it is being restarted", retry_after=RETRY_AFTER_S)
            elif b"content-length" in names and b"transfer-encoding" in names:
                # h11 lets Transfer-Encoding win; a proxy in front may not (request smuggling): refuse both.
                await send_json(outbox.send, 400, "a request may not have both Content-Length and Transfer-Encoding")
            else:
                await (self.health if health else self.bodies)(scope, receive, outbox.send)
        finally:
            await outbox.flushed()
            if self.access_log is not None:
                self.access_log(scope, outbox, time.monotonic() - started)

    async def probe(self) -> bool:
        """Run GET /api/bg/health through BufferedBodies and the main thread pool: True once it has answered."""
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": HEALTH_PATH, "raw_path": HEALTH_PATH.encode(), "query_string": b"",
                 "root_path": "", "headers": [(b"host", b"localhost"), (b"x-request-id", b"watchdog")],
                 "client": ("127.0.0.1", 0), "server": ("127.0.0.1", 0), "state": {}}
        answered = False

        async def receive() -> Message:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: Message) -> None:
            nonlocal answered
            answered = answered or (message["type"] == "http.response.body" and not message.get("more_body"))

        self.probe_since = time.monotonic()
        try:
            await self(scope, receive, send)
        finally:
            self.probe_since = None
        return answered


class WholeResponse:
    """ASGI for health checks: the WSGI app on threads of its own, its whole response handed back at once.

    a2wsgi's thread waits for the event loop to take each message (status, body, end) in turn; under a
    connection flood every such crossing waits for a turn of a busy loop, and health took seconds. A
    health answer is a few hundred bytes, so one crossing, when the thread finishes, is enough.
    """

    def __init__(self, wsgi_app: Any, threads: int) -> None:
        self.app = wsgi_app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="health")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        environ = build_environ(scope, Body(loop, receive))
        status, headers, body = await loop.run_in_executor(self.executor, _whole_response, self.app, environ)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _whole_response(wsgi_app: Any, environ: dict) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Run a WSGI app to the end: (status, headers, body)."""
    chunks: list[bytes] = []
    started: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
        started[:] = [int(status.split(" ", 1)[0]),
                      [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]]
        return chunks.append

    iterable = wsgi_app(environ, start_response)
    try:
        chunks.extend(iterable)
    finally:
        getattr(iterable, "close", lambda: None)()
    return started[0], started[1], b"".join(chunks)


def _with_file_wrapper(wsgi_app: Any) -> Any:
    """The WSGI app with a server-side `wsgi.file_wrapper` (PEP 3333) that reads FILE_CHUNK_BYTES at a time."""

    def file_wrapper(file: IO[bytes], block_size: int = FILE_CHUNK_BYTES) -> FileWrapper:
        return FileWrapper(file, max(block_size, FILE_CHUNK_BYTES))

    def app(environ: dict, start_response: Any) -> Any:
        environ["wsgi.file_wrapper"] = file_wrapper
        return wsgi_app(environ, start_response)

    return app


class Collector:
    """The cycle collector's thresholds by the number of open connections (see FLOOD_CONNECTIONS).

    A closed connection leaves no cycle (GuardedH11Protocol.connection_lost), so what a flood defers is
    the garbage of the requests served meanwhile, for at most `full_every_s`.
    """

    def __init__(self, flood_connections: int = FLOOD_CONNECTIONS, full_every_s: float = FLOOD_FULL_COLLECT_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.flood_connections = flood_connections
        self.full_every_s = full_every_s
        self.clock = clock
        self.thresholds = gc.get_threshold()
        self.flood = False
        self.last_full = clock()

    def update(self, connections: int) -> None:
        """Called every PROBE_INTERVAL_S on the event loop with the number of open connections."""
        if connections < self.flood_connections:
            if self.flood:
                gc.set_threshold(*self.thresholds)
                self.flood = False
            return
        now = self.clock()
        if not self.flood:
            self.thresholds = gc.get_threshold()
            gc.set_threshold(self.thresholds[0], self.thresholds[1], NO_AUTOMATIC_FULL)
            self.flood, self.last_full = True, now
        elif now - self.last_full >= self.full_every_s:
            gc.collect()
            self.last_full = now


class FrontWorker(UvicornWorker):
    """uvicorn's gunicorn worker with the Front, and a heartbeat that means "a request was served"."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "asyncio", "http": "h11", "lifespan": "off", "interface": "asgi3",
                                     "access_log": False, "h11_max_incomplete_event_size": MAX_HEAD_BYTES}

    def load_wsgi(self) -> None:
        files_before, files = raise_open_files_limit()  # before the app derives MAX_CONNECTIONS from it
        wsgi_app = self.app.wsgi()
        flask_config = getattr(wsgi_app, "config", {})
        settings: Config = flask_config.get("PIXPORT") or Config.from_env()
        limits = Limits.from_config(settings, flask_config.get("MAX_CONTENT_LENGTH"))
        if files != files_before:
            log.info("raised the open-file limit from %d to %d (its hard limit)", files_before, files)
        log.info("at most %d connections (MAX_CONNECTIONS; the worker's open-file limit is %d)",
                 limits.max_connections, settings.fd_limit)
        self.front = Front(wsgi_app, max(1, self.cfg.threads), limits, str(settings.upload_folder), self._access)
        self.wsgi = self.front
        self.protocol = guarded_protocol(limits)
        self.config.http = self.protocol
        self.config.timeout_notify = PROBE_INTERVAL_S
        self._probe: asyncio.Task | None = None
        self._connections_peak = 0
        self.collector = Collector()

    async def callback_notify(self) -> None:
        """Called by uvicorn every PROBE_INTERVAL_S: beat only if the last probe answered, then probe again."""
        self.collector.update(len(self.protocol.open))
        probe = self._probe
        if probe is not None and not probe.done():
            return  # still waiting for a thread, or for the app: no heartbeat
        if probe is None or (not probe.cancelled() and probe.exception() is None and probe.result()):
            self.notify()
        loop = asyncio.get_running_loop()
        self._probe = loop.create_task(self.front.probe())
        connections = len(self.protocol.open)
        self._connections_peak = max(self._connections_peak, connections)
        if self._connections_peak >= TRIM_AFTER_CONNECTIONS and connections < self._connections_peak // 4:
            # A surge of connections has passed: hand the heap pages its buffers left behind back to the OS.
            self._connections_peak = connections
            loop.run_in_executor(None, release_memory_to_os)

    def _access(self, scope: Scope, outbox: Outbox, seconds: float) -> None:
        """One access line in gunicorn's access_log_format, through gunicorn's own logger."""
        query = scope.get("query_string", b"")
        raw_uri = scope.get("raw_path", b"").decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        client = scope.get("client") or ("-", 0)
        environ = {"REMOTE_ADDR": client[0], "REQUEST_METHOD": scope["method"], "RAW_URI": raw_uri,
                   "PATH_INFO": scope["path"], "QUERY_STRING": query.decode("latin-1"),
                   "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}"}
        response = SimpleNamespace(status=outbox.status or "-", sent=outbox.sent,
                                   headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in outbox.headers])
        request = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope.get("headers", [])]
        self.log.access(response, request, environ, timedelta(seconds=seconds))
