"""The deployed front (gunicorn.conf.py, app/front.py) against slow, stalled and malformed clients, over loopback.

The server runs with its bounds scaled down (deadlines of 1-4 s, budgets of a few MB) so that each case
takes seconds; bench/hostile.py runs the same attacks at full scale with slowhttptest.
"""
from __future__ import annotations

import asyncio
import gc
import io
import json
import re
import resource
import select
import socket
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import psutil
import pytest
import requests
import uvicorn
from PIL import Image
from uvicorn.server import ServerState

from app import config as config_module
from app.config import Config, ConfigError, connection_bound
from app.front import (LINGER_S, NO_AUTOMATIC_FULL, PROBE_INTERVAL_S, STUCK_AFTER_S, Budget, BufferedBodies,
                       Collector, Limits, Outbox, WholeResponse, guarded_protocol)
from app.services.isnet_tiny_service import IsnetTinyService
from tests.conftest import gunicorn, image_bytes, photo, tiny_onnx, wait_healthy

THREADS = 12  # gunicorn.conf.py's default GUNICORN_THREADS
LIMITS = {"HEADER_TIMEOUT_S": "1", "BODY_TIMEOUT_S": "4", "SEND_TIMEOUT_S": "2", "BODY_MEMORY_MB": "4",
          "SPOOL_MAX_MB": "12", "RESPONSE_MEMORY_MB": "4", "MAX_CONNECTIONS": "400", "SPOOL_WAIT_S": "1.5"}
ROOM_WAIT_S = float(LIMITS["SPOOL_WAIT_S"])
BUNDLE = "/docs/assets/swagger-ui-bundle.js"  # about 1 MB: the largest response anyone can ask for cheaply


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, psutil.Process]]:
    """gunicorn with gunicorn.conf.py and scaled-down LIMITS (the bundled u2netp; the model is not the point)."""
    with gunicorn(tmp_path_factory.mktemp("slow-server"), **LIMITS) as (base, process, log):
        wait_healthy(base, process, log)
        yield base, psutil.Process(process.pid).children()[0]


@pytest.fixture
def server(served: tuple[str, psutil.Process]) -> str:
    return served[0]


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _connect(base: str, receive_buffer: int | None = None) -> socket.socket:
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", _port(base)))
    return sock


def _closed_by_server(sock: socket.socket, within_s: float) -> tuple[bool, bytes]:
    """Read until the server closes or resets the connection; (closed in time, bytes read)."""
    received = b""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return False, received
        except ConnectionResetError:
            return True, received
        if not chunk:
            return True, received
        received += chunk
    return False, received


def _health_s(base: str) -> float:
    started = time.monotonic()
    response = requests.get(f"{base}/api/bg/health", timeout=5)
    assert response.status_code == 200
    return time.monotonic() - started


def _all_threads_answer(base: str) -> None:
    """THREADS requests at once all answer quickly: no thread is left blocked."""
    with ThreadPoolExecutor(THREADS) as pool:
        statuses = list(pool.map(lambda _: requests.get(f"{base}/api/bg/status", timeout=5).status_code,
                                 range(THREADS)))
    assert statuses == [200] * THREADS


def _upload(base: str) -> None:
    data = image_bytes(photo((64, 48)), "PNG")
    response = requests.post(f"{base}/api/bg/remove", files={"file": ("p.png", data)}, timeout=60)
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (64, 48)


# --------------------------------------------------------------------------- the wedge of issue 16


def test_pipelined_slow_readers_neither_wedge_nor_hold_threads(server: str):
    """More connections than threads, each with a small receive buffer, pipelining three requests for the
    1 MB bundle and reading nothing: the old front blocked every thread in send for good. Half close at
    once (the exact wedge); the others are aborted by the send deadline."""
    request = f"GET {BUNDLE} HTTP/1.1\r\nHost: x\r\n\r\n".encode() * 3
    readers = [_connect(server, receive_buffer=4096) for _ in range(THREADS + 4)]
    for sock in readers:
        sock.sendall(request)
    time.sleep(0.5)
    assert max(_health_s(server) for _ in range(3)) < 1.0
    for sock in readers[::2]:
        sock.close()
    time.sleep(float(LIMITS["SEND_TIMEOUT_S"]) + 1.5)  # still reading nothing
    assert _health_s(server) < 1.0
    for sock in readers[1::2]:
        closed, received = _closed_by_server(sock, within_s=2)
        sock.close()
        assert closed and len(received) < 1_000_000, f"still open after {len(received)} bytes"
    _all_threads_answer(server)
    _upload(server)


def test_a_client_that_reads_slowly_still_gets_its_whole_response(server: str):
    """The send deadline is on progress, not on the whole response: a reader that keeps reading is served."""
    sock = _connect(server, receive_buffer=4096)
    sock.sendall(f"GET {BUNDLE} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    received = b""
    while chunk := sock.recv(256 * 1024):
        received += chunk
        time.sleep(0.01)
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    assert head.startswith(b"HTTP/1.1 200") and len(body) == length > 1_000_000


# --------------------------------------------------------------------------- deadlines


def test_a_header_that_never_finishes_and_an_idle_connection_are_closed(server: str):
    """Both are reset at the header deadline."""
    idle = _connect(server)
    half = _connect(server)
    half.sendall(b"GET /api/bg/health HTTP/1.1\r\nHost: x\r\nX-Slow")
    for sock in (idle, half):
        sock.settimeout(float(LIMITS["HEADER_TIMEOUT_S"]) + 3)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
        sock.close()


def test_slowloris_clients_are_dropped_and_do_not_starve_health(server: str):
    """Clients that send a header line every 0.3 s forever: health and uploads are served meanwhile, and
    each slow client is closed by the header deadline (its head never completes)."""
    deadline_s = float(LIMITS["HEADER_TIMEOUT_S"])
    socks = [_connect(server) for _ in range(2 * THREADS)]
    for sock in socks:
        sock.sendall(b"POST /api/bg/remove HTTP/1.1\r\nHost: x\r\n")
    opened = time.monotonic()
    open_socks = list(socks)
    checked_health = False
    for line in range(100):
        if not open_socks or time.monotonic() - opened > deadline_s + 3:
            break
        time.sleep(0.3)
        for sock in list(open_socks):
            try:
                sock.sendall(f"X-Slow-{line}: 1\r\n".encode())
                if sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                    open_socks.remove(sock)  # closed by the server
            except BlockingIOError:
                pass  # still open
            except OSError:
                open_socks.remove(sock)  # reset by the server
        if not checked_health:
            assert max(_health_s(server) for _ in range(3)) < 1.0
            _upload(server)
            checked_health = True
    for sock in socks:
        sock.close()
    assert checked_health and open_socks == [], f"{len(open_socks)} slow clients still open"


def test_a_stalled_body_gets_408(server: str):
    sock = _connect(server)
    sock.sendall(b"POST /api/bg/remove HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 b"Content-Length: 50000\r\n\r\n--b\r\n")
    closed, received = _closed_by_server(sock, within_s=float(LIMITS["BODY_TIMEOUT_S"]) + 3)
    sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert closed and head.startswith(b"HTTP/1.1 408 ")
    assert json.loads(body)["error"].startswith("the request body did not arrive")


# --------------------------------------------------------------------------- bounds


def _partial_upload(base: str, declared: int, sent: int) -> socket.socket:
    sock = _connect(base)
    sock.sendall(f"POST /api/bg/remove HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                 f"Content-Length: {declared}\r\n\r\n".encode() + b"x" * sent)
    return sock


def _answer(sock: socket.socket, within_s: float) -> bytes:
    """The response head the server sent within `within_s`, or b"" if none."""
    _, received = _closed_by_server(sock, within_s)
    return received.partition(b"\r\n\r\n")[0]


def _held_upload(base: str, declared: int) -> socket.socket:
    """A stalled upload the server accepted; the previous test's spool is released just after its answer,
    so a refusal is retried for a moment."""
    for _ in range(10):
        sock = _partial_upload(base, declared=declared, sent=100_000)
        if _answer(sock, within_s=0.5) == b"":
            return sock
        sock.close()
    raise AssertionError("the spool budget was never free")


def test_partial_bodies_are_held_within_the_memory_budget(served: tuple[str, psutil.Process]):
    """150 uploads that stall after 500 KB each would hold 75 MB in memory without a total; BODY_MEMORY_MB=4
    keeps a few in memory, SPOOL_MAX_MB=12 a few more on disk, and the rest wait unread for room, then get
    503 with Retry-After. Reads are 16 KB whatever the event loop (256 KB reads would hold 38 MB here)."""
    base, worker = served
    before = worker.memory_info().rss
    sent = time.monotonic()
    socks = [_partial_upload(base, declared=510_000, sent=500_000) for _ in range(150)]
    time.sleep(1.0)
    grown_mb = (worker.memory_info().rss - before) / 2**20
    assert grown_mb < 30, f"worker RSS grew {grown_mb:.0f} MB"
    assert _health_s(base) < 1.0  # while 130 uploads wait for room
    time.sleep(max(0.0, sent + ROOM_WAIT_S + 1.0 - time.monotonic()))
    heads = [_answer(sock, within_s=0.05) for sock in socks]
    refused = [head for head in heads if head.startswith(b"HTTP/1.1 503 ")]
    assert len(refused) >= 100 and all(b"retry-after: 5" in head.lower() for head in refused)
    assert (worker.memory_info().rss - before) / 2**20 < 30
    for sock in socks:
        sock.close()
    _upload(base)


def test_spooled_bodies_are_held_within_the_disk_budget(server: str):
    """An 8 MB upload reserves its length on disk before a byte is read: with SPOOL_MAX_MB=12 a second one
    waits ROOM_WAIT_S for room, unanswered, then gets 503; the room comes back when the first goes away."""
    first = _held_upload(server, declared=8_000_000)  # accepted: still waiting for its body
    second = _partial_upload(server, declared=8_000_000, sent=0)
    started = time.monotonic()
    head = _answer(second, within_s=ROOM_WAIT_S + 2)
    waited_s = time.monotonic() - started
    second.close()
    assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 5" in head.lower()
    assert ROOM_WAIT_S - 0.5 < waited_s < ROOM_WAIT_S + 1.5
    first.close()
    time.sleep(0.3)
    big = requests.post(f"{server}/api/bg/remove", files={"file": ("x.png", b"\0" * 6_000_000)}, timeout=30)
    assert big.status_code == 415  # spooled and read whole: the app refused what it is, not its size


def test_an_upload_that_waits_for_room_is_served_when_room_frees(server: str):
    """A second 8 MB upload does not fit the 12 MB spool beside the first: it waits, unread and unanswered,
    and is served as soon as the first goes away, instead of being refused."""
    first = _held_upload(server, declared=8_000_000)
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + b"\0" * 6_000_000 + b"\r\n--b--\r\n")
    second = _connect(server)
    sender = threading.Thread(target=second.sendall, daemon=True, args=(
        f"POST /api/bg/remove HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body,))
    sender.start()
    time.sleep(1.0)
    assert sender.is_alive() and select.select([second], [], [], 0)[0] == []  # nothing read, no answer yet
    first.close()
    sender.join(timeout=ROOM_WAIT_S)
    head = _answer(second, within_s=10)
    second.close()
    assert head.startswith(b"HTTP/1.1 415 ")  # read whole: the app refused what it is, not the spool


def test_a_refused_upload_gets_its_answer_not_a_reset(server: str):
    """An upload refused while its body is still streaming in: the server discards the rest for LINGER_S
    rather than closing on unread data (which resets the connection and can destroy the 503)."""
    first = _held_upload(server, declared=8_000_000)  # holds 8 of the 12 MB of spool
    second = _partial_upload(server, declared=8_000_000, sent=3_000_000)  # refused; sent whole, then stalls
    closed, received = _closed_by_server(second, within_s=ROOM_WAIT_S + LINGER_S + 2)
    first.close()
    second.close()
    assert received.startswith(b"HTTP/1.1 503 ") and b"retry-after: 5" in received.lower()
    assert closed  # and it does not stay open


def test_past_the_connection_bound_the_longest_waiting_connection_makes_room(server: str):
    """MAX_CONNECTIONS idle connections: a new client is served, and the oldest idle one is closed for it,
    with a reset (no FIN exchange, no TIME_WAIT on the server)."""
    idle = [_connect(server) for _ in range(int(LIMITS["MAX_CONNECTIONS"]))]
    try:
        time.sleep(0.3)
        assert requests.get(f"{server}/api/bg/status", timeout=5).status_code == 200
        with pytest.raises(ConnectionResetError):
            idle[0].recv(1)
        assert not _closed_by_server(idle[-1], within_s=0.2)[0]
    finally:
        for sock in idle:
            sock.close()


def test_past_the_connection_bound_a_burst_of_new_clients_is_served(server: str):
    """MAX_CONNECTIONS idle connections, then 40 new clients at once: each displaces an idle one, even
    when they arrive before the displaced ones have gone."""
    idle = [_connect(server) for _ in range(int(LIMITS["MAX_CONNECTIONS"]))]
    try:
        time.sleep(0.3)
        burst = [_connect(server) for _ in range(40)]
        for sock in burst:
            sock.sendall(b"GET /api/bg/status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        heads = [_answer(sock, within_s=5) for sock in burst]
        for sock in burst:
            sock.close()
        assert [head.split(b"\r\n")[0] for head in heads] == [b"HTTP/1.1 200 OK"] * 40
    finally:
        for sock in idle:
            sock.close()


def test_past_the_connection_bound_requests_get_503_but_health_is_served(server: str):
    """MAX_CONNECTIONS connections each in the middle of a request (none to displace): a new request gets
    503 with Retry-After, but a health probe still gets 200."""
    busy = [_partial_upload(server, declared=1000, sent=10) for _ in range(int(LIMITS["MAX_CONNECTIONS"]))]
    try:
        time.sleep(0.5)
        response = requests.get(f"{server}/api/bg/status", timeout=5)
        assert response.status_code == 503 and response.headers["Retry-After"] == "5"
        assert "too many open connections" in response.json()["error"]
        assert _health_s(server) < 1.0
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.5)
    assert requests.get(f"{server}/api/bg/status", timeout=5).status_code == 200


def test_the_default_bound_holds_a_flood_up_to_the_open_file_limit_and_displaces_past_it(tmp_path: Path):
    """No MAX_CONNECTIONS, a soft open-file limit of 300 under a hard one of 400: the worker raises its soft
    limit to the hard one and derives the bound from it (400 less the reserve); past it the longest-waiting
    connections are displaced, health answers at once, and the worker never runs out of files (asyncio's
    accept would then stop for a second)."""
    fd_limit, spool_mb = 400, int(LIMITS["SPOOL_MAX_MB"])
    bound = connection_bound(fd_limit, spool_mb)
    started = gunicorn(tmp_path, nofile=(300, fd_limit), **{**LIMITS, "MAX_CONNECTIONS": None})
    base, process, log = started.__enter__()
    idle: list[socket.socket] = []
    try:
        wait_healthy(base, process, log)
        worker = psutil.Process(process.pid).children()[0]
        assert f"at most {bound} connections" in log.read_text() and bound < fd_limit - 100
        assert "raised the open-file limit from 300 to 400 (its hard limit)" in log.read_text()
        idle = [_connect(base) for _ in range(bound + 40)]
        time.sleep(0.5)
        assert _health_s(base) < 1.0
        assert worker.num_fds() < fd_limit
        with pytest.raises(ConnectionResetError):
            idle[0].recv(1)
        assert not _closed_by_server(idle[-1], within_s=0.2)[0]
        assert "out of system resource" not in log.read_text()
    finally:
        for sock in idle:
            sock.close()
        started.__exit__(None, None, None)


def test_the_connection_bound_is_derived_from_the_open_file_limit(monkeypatch: pytest.MonkeyPatch):
    """The open-file limit less the worker's reserve (its own files and one per spooled body), capped by
    the memory budget, always below the limit; MAX_CONNECTIONS overrides it but must fit the limit."""
    reserve = config_module.FD_RESERVE + 256 * 2  # SPOOL_MAX_MB 256: up to 512 bodies of over 512 KB
    assert connection_bound(1024, 256) == 1024 - reserve
    memory_cap = config_module.CONNECTIONS_MEMORY_MB * 1024 * 1024 // config_module.CONNECTION_BYTES
    assert connection_bound(20_000, 256) == min(20_000 - reserve, memory_cap) == 16_384
    assert connection_bound(1_048_576, 256) == memory_cap
    assert connection_bound(1024, 32) > connection_bound(1024, 256)  # a smaller spool needs fewer files
    for limit in (64, 256, 1024, 4096, 20_000, 1_048_576):
        assert connection_bound(limit, 12) < limit
    defaults = Config()
    assert defaults.max_connections == connection_bound(defaults.fd_limit, defaults.spool_max_mb)
    monkeypatch.setattr(config_module, "open_files_limit", lambda: 4096)
    config = Config.from_env({})
    assert (config.fd_limit, config.max_connections) == (4096, 4096 - reserve)
    assert Config.from_env({"MAX_CONNECTIONS": "3000"}).max_connections == 3000
    with pytest.raises(ConfigError, match=re.escape(f"MAX_CONNECTIONS=4000 does not fit the open-file limit (4096, "
                                                     f"less {reserve}")):
        Config.from_env({"MAX_CONNECTIONS": "4000"})


def test_the_soft_open_file_limit_is_raised_to_the_hard_one():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowered = 256 if hard == resource.RLIM_INFINITY else min(256, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (lowered, hard))
    try:
        before, after = config_module.raise_open_files_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert before == lowered and after == now == (config_module.NOFILE_CEILING if hard == resource.RLIM_INFINITY
                                                      else hard)
        assert config_module.raise_open_files_limit() == (after, after)  # once raised, nothing to do
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------- the watchdog


def test_the_watchdog_replaces_a_worker_that_cannot_serve(tmp_path: Path):
    """Take both threads of a worker with requests that never return (tests/wedge_app.py): its event loop
    still runs, so gunicorn's own heartbeat would keep it forever; the front's heartbeat stops, clients'
    health checks (on their own threads) turn 503 once the watchdog's probe has waited STUCK_AFTER_S, and
    the arbiter replaces the worker within `timeout` (8 s here) plus the probe interval."""
    with gunicorn(tmp_path, app="tests.wedge_app:app", GUNICORN_CMD_ARGS="--timeout 8 --threads 2") as (
            base, process, log):
        wait_healthy(base, process, log)
        wedged = psutil.Process(process.pid).children()[0].pid
        with ThreadPoolExecutor(2) as pool:
            for _ in range(2):
                pool.submit(_swallow, f"{base}/wedge")
            time.sleep(0.5)
            assert requests.get(f"{base}/api/bg/health", timeout=1).status_code == 200  # on its own threads
            with pytest.raises(requests.Timeout):
                requests.get(f"{base}/api/bg/status", timeout=1.5)  # every thread is taken: it cannot serve
            unhealthy = _first_health_503(base, within_s=STUCK_AFTER_S + PROBE_INTERVAL_S + 3)
            assert "restarted" in unhealthy.json()["error"] and unhealthy.headers["Retry-After"] == "5"
            started = time.monotonic()
            wait_healthy(base, process, log, seconds=30)
            replaced_s = time.monotonic() - started
        assert [child.pid for child in psutil.Process(process.pid).children()] != [wedged]
        assert f"WORKER TIMEOUT (pid:{wedged})" in log.read_text()
        assert replaced_s < 30


def _first_health_503(base: str, within_s: float) -> requests.Response:
    """Poll health (answered by its own threads) until it says 503."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        response = requests.get(f"{base}/api/bg/health", timeout=2)
        if response.status_code == 503:
            return response
        assert response.status_code == 200
        time.sleep(0.2)
    raise AssertionError(f"health did not turn 503 within {within_s} s")


def _swallow(url: str) -> None:
    try:
        requests.get(url, timeout=30)
    except requests.RequestException:
        pass


# --------------------------------------------------------------------------- HTTP-layer errors and bodies


def test_chunked_upload_is_served(server: str):
    data = image_bytes(photo((64, 48)), "PNG")
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n")
    chunks = (body[i:i + 1000] for i in range(0, len(body), 1000))
    response = requests.post(f"{server}/api/bg/remove", data=chunks, timeout=60,
                             headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 200, response.text[:200]


def _raw(base: str, request: bytes) -> tuple[str, dict]:
    with _connect(base) as sock:
        sock.sendall(request)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    return head.decode("latin-1"), json.loads(body)


@pytest.mark.parametrize("request_bytes, status", [
    (b"POST /api/bg/remove HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400),
    (b"GET /api/bg/health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n", 431),
    (b"NOT HTTP AT ALL\r\n\r\n", 400),
], ids=["content-length-with-transfer-encoding", "100-KB-header", "not-http"])
def test_errors_from_the_http_layer_are_json(server: str, request_bytes: bytes, status: int):
    head, body = _raw(server, request_bytes)
    assert head.startswith(f"HTTP/1.1 {status} ")
    assert "content-type: application/json" in head.lower()
    assert set(body) == {"error"} and body["error"]


def _limits(max_body: int, timeout_s: float = 5.0, spool: int = 2**30) -> Limits:
    return Limits(max_connections=100, header_timeout_s=1, body_timeout_s=timeout_s, send_timeout_s=1,
                  body_memory_bytes=2**20, spool_bytes=spool, response_memory_bytes=2**20, max_body=max_body)


def _run_buffered(messages: list[dict], limits: Limits,
                  headers: list | None = None) -> tuple[list[dict], dict | None, bytes]:
    """Drive BufferedBodies with scripted client messages; returns (sent messages, scope seen by the app, body)."""
    seen: dict = {}

    async def app(scope, receive, send):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        seen.update(scope=scope, body=body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main() -> list[dict]:
        queue = list(messages)
        sent: list[dict] = []

        async def receive():
            if queue:
                return queue.pop(0)
            await asyncio.sleep(3600)  # a client that stalls

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "headers": headers or [(b"transfer-encoding", b"chunked")]}
        await BufferedBodies(app, limits, None, Budget(limits.body_memory_bytes), Budget(limits.spool_bytes))(
            scope, receive, send)
        return sent

    sent = asyncio.run(main())
    return sent, seen.get("scope"), seen.get("body", b"")


def test_buffered_bodies_hand_the_app_a_whole_body_with_its_length():
    chunks = [{"type": "http.request", "body": b"x" * 700_000, "more_body": True},
              {"type": "http.request", "body": b"y" * 10, "more_body": False}]
    sent, scope, body = _run_buffered(chunks, _limits(max_body=1_000_000))
    assert body == b"x" * 700_000 + b"y" * 10
    assert (b"content-length", b"700010") in scope["headers"]
    assert not any(name == b"transfer-encoding" for name, _ in scope["headers"])


def test_buffered_bodies_stop_reading_past_the_limit():
    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 10
    _, scope, body = _run_buffered(chunks, _limits(max_body=1000))
    assert len(body) == 1200  # read up to the limit and one chunk over; the app refuses it by its length
    assert (b"content-length", b"1200") in scope["headers"]


def test_buffered_bodies_answer_408_to_a_stalled_body():
    sent, scope, _ = _run_buffered([{"type": "http.request", "body": b"x", "more_body": True}],
                                   _limits(1000, timeout_s=0.2))
    assert scope is None
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"].startswith("the request body did not arrive")


@pytest.mark.parametrize("headers", [[(b"content-length", b"3000000")], [(b"transfer-encoding", b"chunked")]],
                         ids=["declared", "chunked"])
def test_buffered_bodies_answer_503_past_the_spool_budget(headers: list):
    chunks = [{"type": "http.request", "body": b"x" * 1_000_000, "more_body": True}] * 3
    sent, scope, _ = _run_buffered(chunks, _limits(max_body=10_000_000, spool=2_000_000), headers)
    assert scope is None
    assert sent[0]["status"] == 503 and (b"retry-after", b"5") in sent[0]["headers"]


def test_front_settings_are_read_with_their_types_and_checked():
    config = Config.from_env({"MAX_CONNECTIONS": "50", "HEADER_TIMEOUT_S": "2.5", "SPOOL_MAX_MB": "20"})
    assert (config.max_connections, config.header_timeout_s, config.spool_max_mb) == (50, 2.5, 20)
    assert isinstance(config.body_memory_mb, int) and config.body_timeout_s == Config().body_timeout_s
    for env, message in [({"MAX_CONNECTIONS": "5"}, "MAX_CONNECTIONS=5 is out of range"),
                         ({"BODY_MEMORY_MB": "1.5"}, "BODY_MEMORY_MB='1.5' is not a whole number"),
                         ({"SEND_TIMEOUT_S": "0"}, "SEND_TIMEOUT_S=0.0 is out of range"),
                         ({"SPOOL_MAX_MB": "4"}, "SPOOL_MAX_MB=4 cannot hold one upload")]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            Config.from_env(env)


def test_a_budget_grants_waiters_in_turn_and_expires_the_rest():
    """take_within: first come, first served as room is given back; a waiter past its time gets False and
    stops blocking a smaller one behind it; a cancelled waiter leaves nothing taken."""

    async def main() -> list:
        budget = Budget(10)
        assert budget.take(8)
        big = asyncio.ensure_future(budget.take_within(6, 0.2))
        small = asyncio.ensure_future(budget.take_within(2, 5))
        cancelled = asyncio.ensure_future(budget.take_within(2, 5))
        await asyncio.sleep(0.05)
        assert not (big.done() or small.done())  # 2 units are free, but the small one waits its turn
        cancelled.cancel()
        outcome = [await big, await small]
        budget.give(8)
        granted = asyncio.ensure_future(budget.take_within(8, 5))
        await asyncio.sleep(0)
        return outcome + [await granted, budget.used]

    assert asyncio.run(main()) == [False, True, True, 10]


class _StalledConnection:
    """What Outbox needs of a connection: its write side is backed up, and abort() records why."""

    writing_paused = True

    def __init__(self) -> None:
        self.aborted: str | None = None

    def abort(self, why: str) -> None:
        self.aborted = why


def test_a_full_response_budget_aborts_the_response_waiting_longest_not_the_newcomer():
    """Slow readers fill RESPONSE_MEMORY_MB: a new answer that must wait takes the room of the one that has
    waited longest (that client is aborted), so a normal client's download during a slow-read attack
    completes; the response waiting longest is itself refused when nothing waited longer."""

    async def main() -> tuple:
        budget, backed_up = Budget(10), {}
        never = asyncio.Event()

        async def send(message: dict) -> None:  # a backed-up transport: the write never completes
            await never.wait()

        async def two(outbox: Outbox, size: int) -> None:
            """One message in flight (no longer counted), one queued behind it (counted)."""
            for _ in range(2):
                await outbox.send({"type": "http.response.body", "body": b"x" * size, "more_body": True})
                await asyncio.sleep(0.01)

        slower, slow, fresh = (_StalledConnection() for _ in range(3))
        oldest, older = Outbox(send, slower, budget, backed_up), Outbox(send, slow, budget, backed_up)
        await two(oldest, 6)
        await two(older, 4)
        newcomer = Outbox(send, fresh, budget, backed_up)
        await newcomer.send({"type": "http.response.body", "body": b"x" * 5, "more_body": True})
        state = (slower.aborted is not None, slow.aborted, fresh.aborted, budget.used, oldest.dropped)
        lone = Outbox(send, _StalledConnection(), Budget(4), {})
        await lone.send({"type": "http.response.body", "body": b"x" * 5})
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        return state, lone.dropped

    state, lone_dropped = asyncio.run(main())
    assert state == (True, None, None, 9, True)  # the oldest's queued 6 made room for the newcomer's 5
    assert lone_dropped  # nothing waited longer than it: it is the one refused


def test_a_health_answer_needs_the_event_loop_only_once():
    """The health threads run the app to its end without waiting for the event loop (a2wsgi's thread waits
    for the loop to take each message; under a flood each wait is a turn of a busy loop): with the loop
    blocked, the app still finishes, and its whole answer is sent once the loop runs again."""
    finished = threading.Event()

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "application/json")])
        yield b'{"status": '
        yield b'"healthy"}'
        finished.set()

    async def main() -> list[dict]:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": "/api/bg/health", "query_string": b"", "headers": [],
                 "http_version": "1.1", "root_path": ""}
        task = asyncio.ensure_future(WholeResponse(app, 1)(scope, receive, send))
        await asyncio.sleep(0)  # the task hands the request to its thread
        assert finished.wait(timeout=2)  # the loop is blocked here, and the app has finished regardless
        await task
        return sent

    sent = asyncio.run(main())
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 200 and sent[1]["body"] == b'{"status": "healthy"}'


# --------------------------------------------------------------------------- the CPU: the event loop first


def _nice_by_thread(pid: int) -> dict[int, int]:
    """Each thread's nice value (field 19 of /proc/PID/task/TID/stat)."""
    values = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            values[int(task.name)] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return values


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice values are Linux's")
def test_inference_threads_yield_the_cpu_and_the_event_loop_keeps_its_priority(served):
    """After an upload, the thread that ran it is INFERENCE_NICE levels below the worker's main thread (the
    event loop), which is where it started."""
    base, worker = served
    before = worker.nice()
    _upload(base)
    nice = _nice_by_thread(worker.pid)
    assert nice[worker.pid] == before
    assert min(19, before + Config().inference_nice) in set(nice.values()) - {before}
    assert _health_s(base) < 1.0


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="per-thread nice values are Linux's")
def test_onnxruntime_pool_threads_and_the_slot_run_at_the_inference_nice_value(tmp_path: Path):
    """onnxruntime's intra-op threads start in the thread that creates the session and inherit its nice value."""
    pid = psutil.Process().pid
    base = psutil.Process().nice()
    config = Config(model_path=tiny_onnx(tmp_path / "tiny.onnx"), bg_model="isnet-general-use", ort_threads=2,
                    inference_nice=3, model_dir=tmp_path)
    service = IsnetTinyService(config)
    before = set(_nice_by_thread(pid))
    service.start_loading()
    service.wait_until_ready(30)
    pool = {tid: value for tid, value in _nice_by_thread(pid).items() if tid not in before}
    lowered = min(19, base + 3)
    assert pool and set(pool.values()) == {lowered}, pool  # the loader thread has ended; its pool remains
    inside: list[int] = []

    def request() -> None:
        with service.slot() as size:
            inside.append(_nice_by_thread(pid)[threading.get_native_id()])
            service.mask(Image.new("RGB", (size, size)), (size, size))

    thread = threading.Thread(target=request)
    thread.start()
    thread.join()
    assert inside == [lowered] and _nice_by_thread(pid)[threading.get_native_id()] == base


def test_a_closed_connection_is_freed_at_once_not_left_to_the_garbage_collector():
    """A flood that the header deadline recycles closes thousands of connections a second; each one left in
    a reference cycle waits for a full collection, which then holds the event loop for up to 0.75 s
    (docs/performance.md). With the collector off, a closed connection must still be gone."""

    async def app(scope: dict, receive: object, send: object) -> None:
        return None

    async def run() -> None:
        config = uvicorn.Config(app=app, http="h11", lifespan="off")
        config.load()
        protocol = guarded_protocol(_limits(max_body=1024))
        state = ServerState()
        server = await asyncio.get_running_loop().create_server(
            lambda: protocol(config=config, server_state=state, app_state={}), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        clients = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        clients[1][1].write(b"GET /api/bg/health HTTP/1.1\r\nHost: x\r\nX-Ha")  # one idle, one half a head
        await asyncio.sleep(0.2)
        connections = [weakref.ref(conn) for conn in protocol.open]
        transports = [weakref.ref(conn.transport) for conn in protocol.open]
        assert len(connections) == 2
        for _, writer in clients:
            writer.close()
        await asyncio.sleep(0.2)
        assert not protocol.open and [ref() for ref in connections] == [None, None]
        assert [ref() for ref in transports] == [None, None]  # CPython 3.11's own cycle (gh-100348) broken too
        server.close()
        await server.wait_closed()

    gc.disable()
    try:
        asyncio.run(run())
    finally:
        gc.enable()


def test_full_collections_wait_while_a_flood_holds_connections(monkeypatch: pytest.MonkeyPatch):
    """A full collection walks every live connection (0.2-0.4 s on the event loop at 16,384): during a flood
    there is none but the watchdog's, every full_every_s; the thresholds come back when the flood ends."""
    collections_run: list[int] = []
    monkeypatch.setattr(gc, "collect", lambda generation=2: collections_run.append(generation) or 0)
    now = [0.0]
    before = gc.get_threshold()
    collector = Collector(flood_connections=100, full_every_s=60, clock=lambda: now[0])
    try:
        collector.update(99)
        assert gc.get_threshold() == before and not collections_run
        collector.update(100)
        assert gc.get_threshold() == (before[0], before[1], NO_AUTOMATIC_FULL)
        for now[0] in (2.0, 30.0, 59.0):
            collector.update(16_000)
        assert not collections_run
        now[0] = 60.0
        collector.update(16_000)
        assert collections_run == [2]
        now[0] = 62.0
        collector.update(16_000)
        assert collections_run == [2]
        collector.update(50)
        assert gc.get_threshold() == before
    finally:
        gc.set_threshold(*before)
