"""The real thing: gunicorn with the production config in a child process, a real HTTP client over loopback."""
from __future__ import annotations

import io
from typing import Iterator

import pytest
import requests
from PIL import Image

from tests.conftest import FIXTURES, gunicorn, wait_healthy

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with gunicorn(tmp_path_factory.mktemp("server")) as (base, process, log):
        wait_healthy(base, process, log)
        yield base


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
