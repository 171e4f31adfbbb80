"""The real PyPI remove.bg client (`removebg` 0.4, unmodified) pointed at a loopback server: a file, a URL
and base64, checking the files it writes. Only its API_ENDPOINT is changed, the one-line switch users make.
Also, when REMOVEBG_JS_CLIENT names a node_modules with it, the npm `remove.bg` client.
"""
from __future__ import annotations

import base64
import os
import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import ROOT, image_bytes, photo, served

removebg = pytest.importorskip("removebg")
from removebg import RemoveBg  # noqa: E402 (after the skip)

PHOTO = image_bytes(photo((1000, 750)), "JPEG")


def image_app(environ: dict, start_response: Callable) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "image/jpeg"), ("Content-Length", str(len(PHOTO)))])
    return [PHOTO]


@pytest.fixture
def pointed(make_app, monkeypatch):
    """Starts the service on a loopback port (its image_url may reach loopback) and sets the client's
    endpoint to it: the one line a user changes."""
    with ExitStack() as servers:
        def start(**env: str) -> None:
            base = servers.enter_context(served(make_app(IMAGE_URL_ALLOW_PRIVATE="1", **env)))
            monkeypatch.setattr(removebg.removebg, "API_ENDPOINT", f"{base}/v1.0/removebg")

        yield start


def cutout(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    assert image.format == "PNG" and image.mode == "RGBA"
    # size=regular (the client's default) is remove.bg's 0.25 megapixels, at the photo's aspect ratio
    assert 240_000 < image.width * image.height <= 250_000 and abs(image.width / image.height - 4 / 3) < 0.01
    alpha = np.asarray(image.getchannel("A"))
    assert alpha[image.height // 2, image.width // 2] > 200 and alpha[2, 2] < 50  # the disc kept, the corner gone
    return image


def test_file_url_and_base64(pointed, tmp_path, monkeypatch):
    pointed()
    monkeypatch.chdir(tmp_path)
    client = RemoveBg("any-key", str(tmp_path / "errors.log"))
    source = tmp_path / "photo.jpg"
    source.write_bytes(PHOTO)

    client.remove_background_from_img_file(str(source))
    from_file = cutout(tmp_path / "photo.jpg_no_bg.png")

    with served(image_app) as images:
        client.remove_background_from_img_url(f"{images}/photo.jpg", new_file_name=str(tmp_path / "url.png"))
    from_url = cutout(tmp_path / "url.png")

    client.remove_background_from_base64_img(base64.b64encode(PHOTO).decode(), new_file_name=str(tmp_path / "b64.png"))
    from_b64 = cutout(tmp_path / "b64.png")

    assert np.array_equal(np.asarray(from_file), np.asarray(from_url))
    assert np.array_equal(np.asarray(from_file), np.asarray(from_b64))


def test_sizes_and_bg_color(pointed, tmp_path):
    pointed()
    client = RemoveBg("any-key", str(tmp_path / "errors.log"))
    source = tmp_path / "p.jpg"
    source.write_bytes(PHOTO)
    client.remove_background_from_img_file(str(source), size="4k", bg_color="81d4fa")
    written = Image.open(tmp_path / "p.jpg_no_bg.png")  # the client's name; format=auto made it a JPEG
    assert written.format == "JPEG" and written.size == (1000, 750)
    assert written.getpixel((1, 1)) == pytest.approx((0x81, 0xD4, 0xFA), abs=4)


def test_a_wrong_key_is_the_403_the_client_raises(pointed, tmp_path):
    pointed(API_KEY="secret")
    source = tmp_path / "p.jpg"
    source.write_bytes(PHOTO)
    with pytest.raises(requests.HTTPError) as raised:
        RemoveBg("wrong", str(tmp_path / "errors.log")).remove_background_from_img_file(str(source))
    assert raised.value.response.status_code == 403
    assert raised.value.response.json()["errors"][0]["title"] == "Invalid API Key"
    assert not (tmp_path / "p.jpg_no_bg.png").exists()
    RemoveBg("secret", str(tmp_path / "errors.log")).remove_background_from_img_file(str(source))
    cutout(tmp_path / "p.jpg_no_bg.png")


JS_CLIENT = os.environ.get("REMOVEBG_JS_CLIENT")  # a node_modules folder holding the npm `remove.bg` package


@pytest.mark.skipif(not JS_CLIENT or not shutil.which("node"), reason="set REMOVEBG_JS_CLIENT to a node_modules "
                    "with the npm remove.bg client (npm install remove.bg@1.3.0) and have node on PATH")
def test_the_npm_client(make_app, tmp_path):
    """bench/removebg_js_client.js: file, base64, crop + scale, bg_color, add_shadow (refused) and a URL."""
    source = tmp_path / "photo.jpg"
    source.write_bytes(PHOTO)
    with served(make_app(IMAGE_URL_ALLOW_PRIVATE="1")) as base, served(image_app) as images:
        run = subprocess.run(["node", str(ROOT / "bench" / "removebg_js_client.js"), base, str(source),
                              str(tmp_path / "out"), f"{images}/photo.jpg"],
                             env={**os.environ, "NODE_PATH": JS_CLIENT}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    for name in ("file.png", "base64.png", "crop-scale.png", "url.png"):
        assert Image.open(tmp_path / "out" / name).mode == "RGBA"
    assert Image.open(tmp_path / "out" / "bg-color.jpg").format == "JPEG"
    assert '"code":"unsupported_add_shadow"' in run.stdout
