"""Hostile and odd input through HTTP: bombs refused before decoding, odd formats served, memory returned."""
from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from app.services.isnet_tiny_service import rss_mb
from tests.conftest import image_bytes, photo, upload
from tests.test_api import assert_json_error
from tests.test_imaging import png_header_only


def test_bomb_is_refused_without_decoding(client, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the bomb was decoded")

    monkeypatch.setattr(Image.Image, "load", never)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", never)
    for size in ((60000, 60000), (10000, 5000)):
        message = assert_json_error(client.post("/api/bg/remove", data=upload(png_header_only(*size), "bomb.png")), 413)
        assert "pixels" in message


def test_max_pixels_is_configurable(make_app):
    client = make_app(MAX_PIXELS="1000000").test_client()
    assert_json_error(client.post("/api/bg/remove", data=upload(png_header_only(1200, 1000), "b.png")), 413)


def _animated(fmt: str) -> bytes:
    frames = [photo((40, 30)), Image.new("RGB", (40, 30), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def _palette_with_transparency() -> bytes:
    image = photo((40, 30)).convert("P")
    image.paste(0, (0, 0, 10, 10))
    return image_bytes(image, "PNG", transparency=0)


def _sixteen_bit() -> bytes:
    return image_bytes(Image.fromarray(np.asarray(photo((40, 30)).convert("L"), dtype=np.uint16) * 257), "PNG")


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return image_bytes(photo((40, 30)), "JPEG", exif=exif.tobytes())


ODD_INPUTS = {
    "animated-gif": (_animated("GIF"), "a.gif", (40, 30)),
    "animated-webp": (_animated("WEBP"), "a.webp", (40, 30)),
    "multipage-tiff": (_animated("TIFF"), "a.tiff", (40, 30)),
    "cmyk-jpeg": (image_bytes(photo((40, 30)).convert("CMYK"), "JPEG"), "c.jpg", (40, 30)),
    "16-bit-png": (_sixteen_bit(), "g.png", (40, 30)),
    "palette-trns": (_palette_with_transparency(), "p.png", (40, 30)),
    "la-png": (image_bytes(photo((40, 30)).convert("LA"), "PNG"), "la.png", (40, 30)),
    "1x1": (image_bytes(Image.new("RGB", (1, 1), "red"), "PNG"), "one.png", (1, 1)),
    "10000x3": (image_bytes(Image.new("RGB", (10000, 3), "red"), "PNG"), "wide.png", (1024, 1)),
    "exif-rotated": (_exif_rotated(), "r.jpg", (30, 40)),
    "bmp": (image_bytes(photo((40, 30)), "BMP"), "b.bmp", (40, 30)),
}


@pytest.mark.disc_model
@pytest.mark.parametrize("name", list(ODD_INPUTS))
@pytest.mark.parametrize("path", ["/api/bg/remove", "/api/bg/change_color"])
def test_odd_inputs_are_served(client, name, path):
    data, filename, size = ODD_INPUTS[name]
    response = client.post(path, data=upload(data, filename))
    assert response.status_code == 200, response.get_json()
    assert Image.open(io.BytesIO(response.data)).size == size


def test_clear_cache_returns_memory_to_the_os(client):
    client.post("/api/bg/remove", data=upload(image_bytes(photo((1024, 768)), "JPEG"), "big.jpg"))
    loaded = rss_mb()
    body = client.post("/api/bg/clear_cache").get_json()
    assert rss_mb() < loaded - 5, f"RSS {loaded:.0f} -> {rss_mb():.0f} MB"
    assert body["freed_mb"] > 5


def test_production_start_logs_no_warnings(make_app, caplog):
    with caplog.at_level(logging.WARNING):
        make_app(FLASK_ENV="production")
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []


def test_errors_never_leak_paths_or_tracebacks(make_app, monkeypatch):
    client = make_app().test_client()

    def explode(*args, **kwargs):
        raise RuntimeError("/secret/path/in/server exploded")

    monkeypatch.setattr("app.pipeline.remove_background", explode)
    response = client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG")))
    message = assert_json_error(response, 500)
    assert "/secret" not in message and "RuntimeError" not in message
