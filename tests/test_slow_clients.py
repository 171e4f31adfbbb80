"""The deployed front (gunicorn.conf.py) against slow and malformed clients, over loopback.

Slow clients must not starve /api/bg/health or ordinary requests (gthread would give each of them a thread),
and gunicorn's own errors must be JSON like the app's.
"""
from __future__ import annotations

import io
import json
import socket
import threading
from typing import Iterator

import pytest
import requests
from PIL import Image

from tests.conftest import gunicorn, image_bytes, photo, wait_healthy

SLOW_EACH = 8  # x 3 kinds = 24 connections, twice gunicorn.conf.py's 12 threads


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """gunicorn with gunicorn.conf.py in a child process (the bundled u2netp; the model is not the point)."""
    with gunicorn(tmp_path_factory.mktemp("slow-server")) as (base, process, log):
        wait_healthy(base, process, log)
        yield base


def _port(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def _slow_header(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/bg/remove HTTP/1.1\r\nHost: x\r\n")
        index = 0
        while not stop.wait(0.3):
            sock.sendall(f"X-Slow-{index}: 1\r\n".encode())
            index += 1


def _slow_body(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"POST /api/bg/remove HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 50000\r\n\r\n--b\r\n")
        while not stop.wait(0.3):
            sock.sendall(b"x")


def _idle(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30):
        stop.wait()


@pytest.fixture
def slow_clients(server: str) -> Iterator[None]:
    stop = threading.Event()
    threads = [threading.Thread(target=kind, args=(_port(server), stop), daemon=True)
               for kind in (_slow_header, _slow_body, _idle) for _ in range(SLOW_EACH)]
    for thread in threads:
        thread.start()
    stop.wait(1.0)  # every connection is open and has started sending
    yield
    stop.set()
    for thread in threads:
        thread.join(timeout=5)


def test_health_and_uploads_are_served_while_slow_clients_hold_connections(server: str, slow_clients: None):
    for _ in range(3):
        health = requests.get(f"{server}/api/bg/health", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "healthy"
    data = image_bytes(photo((64, 48)), "PNG")
    response = requests.post(f"{server}/api/bg/remove", files={"file": ("p.png", data)}, timeout=60)
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (64, 48)


def test_chunked_upload_is_served(server: str):
    data = image_bytes(photo((64, 48)), "PNG")
    body = (b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"p.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + data + b"\r\n--b--\r\n")
    chunks = (body[i:i + 1000] for i in range(0, len(body), 1000))
    response = requests.post(f"{server}/api/bg/remove", data=chunks, timeout=60,
                             headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert response.status_code == 200, response.text[:200]


def _raw(base: str, request: bytes) -> tuple[str, dict]:
    with socket.create_connection(("127.0.0.1", _port(base)), timeout=10) as sock:
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


def _run_buffered(messages: list[dict], max_body: int, timeout_s: float = 5.0) -> tuple[list[dict], dict | None, bytes]:
    """Drive BufferedBodies with scripted client messages; returns (sent messages, scope seen by the app, body)."""
    import asyncio

    from app.front import BufferedBodies

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

        scope = {"type": "http", "headers": [(b"transfer-encoding", b"chunked")]}
        await BufferedBodies(app, max_body, None, timeout_s)(scope, receive, send)
        return sent

    sent = asyncio.run(main())
    return sent, seen.get("scope"), seen.get("body", b"")


def test_buffered_bodies_hand_the_app_a_whole_body_with_its_length():
    chunks = [{"type": "http.request", "body": b"x" * 700_000, "more_body": True},
              {"type": "http.request", "body": b"y" * 10, "more_body": False}]
    sent, scope, body = _run_buffered(chunks, max_body=1_000_000)
    assert body == b"x" * 700_000 + b"y" * 10
    assert (b"content-length", b"700010") in scope["headers"]
    assert not any(name == b"transfer-encoding" for name, _ in scope["headers"])


def test_buffered_bodies_stop_reading_past_the_limit():
    chunks = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 10
    _, scope, body = _run_buffered(chunks, max_body=1000)
    assert len(body) == 1200  # read up to the limit and one chunk over; the app refuses it by its length
    assert (b"content-length", b"1200") in scope["headers"]


def test_buffered_bodies_answer_408_to_a_stalled_body():
    sent, scope, _ = _run_buffered([{"type": "http.request", "body": b"x", "more_body": True}], 1000, 0.2)
    assert scope is None
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"].startswith("the request body did not arrive")
