"""The real thing: gunicorn with the production config in a child process, a real HTTP client over loopback."""
from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests
from PIL import Image

from tests.conftest import FIXTURES

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    home = tmp_path_factory.mktemp("server")
    env = {**os.environ, "PORT": str(port), "MODEL_DIR": str(home / "models"),
           "UPLOAD_FOLDER": str(home / "up"), "PROCESSED_FOLDER": str(home / "out")}
    env.pop("BG_MODEL", None)
    env.pop("MODEL_PATH", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app_isnet_tiny:app"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{base}/api/bg/health", timeout=1).status_code == 200:
                break
        except requests.ConnectionError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("server did not start: " + process.stdout.read().decode(errors="replace")[-2000:])
    yield base
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=30)


def test_curl_like_upload(server: str):
    photo = FIXTURES / "images" / "car-1.jpg"
    with photo.open("rb") as handle:
        response = requests.post(f"{server}/api/bg/remove", files={"file": (photo.name, handle)}, timeout=60)
    assert response.status_code == 200 and response.headers["Content-Type"] == "image/png"
    assert 'filename=nobg_car-1.png' in response.headers["Content-Disposition"]
    result = Image.open(io.BytesIO(response.content))
    assert result.mode == "RGBA" and result.size == Image.open(photo).size


def test_change_color_and_errors_over_http(server: str):
    photo = (FIXTURES / "images" / "girl-2.jpg").read_bytes()
    ok = requests.post(f"{server}/api/bg/change_color", files={"file": ("g.jpg", photo)}, data={"color": "0,0,255"}, timeout=60)
    assert ok.status_code == 200 and ok.headers["Content-Type"] == "image/jpeg"
    bad = requests.post(f"{server}/api/bg/change_color", files={"file": ("g.jpg", photo)}, data={"color": "nope"}, timeout=60)
    assert bad.status_code == 400 and "#RRGGBB" in bad.json()["error"]
    text = requests.post(f"{server}/api/bg/remove", files={"file": ("a.jpg", b"plain text")}, timeout=60)
    assert text.status_code == 415 and "error" in text.json()
    empty = requests.post(f"{server}/api/bg/remove", files={"file": ("a.jpg", b"")}, timeout=60)
    assert empty.status_code == 400
    huge = requests.post(f"{server}/api/bg/remove", files={"file": ("a.jpg", b"\0" * (9 * 1024 * 1024))}, timeout=60)
    assert huge.status_code == 413 and "8 MB" in huge.json()["error"]


def test_status_and_page(server: str):
    status = requests.get(f"{server}/api/bg/status", timeout=5).json()
    assert status["model"] == "u2netp" and status["memory"]["rss_mb"] > 0
    page = requests.get(f"{server}/", timeout=5)
    assert page.status_code == 200 and f"{server}/api/bg/remove" in page.text
