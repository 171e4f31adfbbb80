"""Issue 10: memory bounded by decode cost, PNG text not held, MPO served, clear_cache under load, 413 messages.

Small generated inputs; the memory figures themselves are in bench/hostile.py, not here. Requests run on the
64 px disc model (the disc_model mark): these tests are about limits, decoding and the queue.
"""
from __future__ import annotations

import io
import struct
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from app import imaging
from app.errors import TooLarge
from app.services import isnet_tiny_service
from tests.conftest import image_bytes, photo, upload
from tests.test_api import assert_json_error
from tests.test_imaging import png_header_only
from tests.test_service import loaded_with_slow_session

pytestmark = pytest.mark.disc_model

MAX_PIXELS = 40_000_000


@pytest.fixture(scope="module")
def large_photo() -> Image.Image:
    """A 12 MP photo(), built once: building it takes seconds."""
    return photo((4000, 3000))


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_with_ztxt(chunks: int, inflated: int) -> bytes:
    """A small PNG whose zTXt chunks (before IDAT, so Image.open inflates them) hold `inflated` bytes each."""
    data = image_bytes(photo((40, 30)), "PNG")
    text = zlib.compress(b"a" * inflated, 9)
    extra = b"".join(_chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + text) for i in range(chunks))
    return data[:33] + extra + data[33:]


# ----------------------------------------------------------------------------- (1) decode cost


def test_costly_image_is_refused_from_its_header_before_decoding(make_app, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("the image was decoded")

    client = make_app(MAX_DECODE_MB="16").test_client()
    monkeypatch.setattr(Image.Image, "load", never)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", never)
    response = client.post("/api/bg/remove", data=upload(png_header_only(3000, 3000), "big.png"))
    message = assert_json_error(response, 413)
    assert "3000x3000" in message and "MAX_DECODE_MB" in message and "16 MB" in message


def test_webp_costs_more_than_png_of_the_same_size():
    """libwebp decodes at full size with two canvases; a PNG only needs its raster."""
    image = Image.new("RGB", (1500, 1000), (200, 100, 50))
    webp = imaging.open_checked(image_bytes(image, "WEBP", lossless=True), MAX_PIXELS)
    png = imaging.open_checked(image_bytes(image, "PNG"), MAX_PIXELS)
    assert webp.decode_bytes > png.decode_bytes + 1500 * 1000 * 8
    with pytest.raises(TooLarge, match="WebP is decoded at full size"):
        imaging.open_checked(image_bytes(image, "WEBP", lossless=True), MAX_PIXELS, webp.decode_bytes - 1)


def test_jpeg_estimate_uses_the_reduced_scale_decode(large_photo):
    jpeg = imaging.open_checked(image_bytes(large_photo, "JPEG"), MAX_PIXELS)
    png = imaging.open_checked(image_bytes(large_photo, "PNG", compress_level=1), MAX_PIXELS)
    assert jpeg.decode_bytes < png.decode_bytes / 2


def test_cost_limit_is_configurable_and_checked_for_bg_image(make_app):
    client = make_app(MAX_DECODE_MB="16").test_client()
    small = image_bytes(photo((64, 48)), "PNG")
    response = client.post("/api/bg/change_color", data={
        "file": (io.BytesIO(small), "a.png"), "bg_image": (io.BytesIO(png_header_only(3000, 3000)), "bg.png")})
    assert "MAX_DECODE_MB" in assert_json_error(response, 413)


@pytest.mark.parametrize("mode", ["I;16", "F", "I", "LA", "RGBA", "P", "1", "CMYK"])
def test_banded_decode_matches_a_single_band(mode, monkeypatch):
    """Converting and reducing a band at a time gives exactly what one band for the whole image gives."""
    grey = np.tile(np.linspace(0, 60000, 900, dtype=np.float64)[:, None], (1, 700)).astype(np.uint16)
    if mode in ("I;16", "F", "I"):
        source = Image.fromarray(grey)
        source = source if mode == "I;16" else source.convert(mode)
        fmt = "PNG" if mode == "I;16" else "TIFF"
    else:
        source = photo((700, 900)).convert(mode)
        fmt = "TIFF" if mode == "CMYK" else "PNG"
    data = image_bytes(source, fmt)

    def decoded(band_bytes: int) -> imaging.Decoded:
        monkeypatch.setattr(imaging, "_BAND_BYTES", band_bytes)
        return imaging.decode(imaging.open_checked(data, MAX_PIXELS), 100, 64)

    whole, banded = decoded(1 << 30), decoded(700 * 4 * 7)  # about 7 rows a band: many bands
    assert whole.rgb.size == banded.rgb.size == (78, 100)
    assert np.array_equal(np.asarray(whole.rgb), np.asarray(banded.rgb))
    assert np.array_equal(np.asarray(whole.model_rgb), np.asarray(banded.model_rgb))
    assert np.asarray(banded.rgb).max() > 128


def test_reduction_keeps_the_result_close_to_a_direct_resize():
    """The box pre-reduction stays at least twice the needed size, so LANCZOS from there looks the same."""
    source = photo((3000, 2000))
    decoded = imaging.decode(imaging.open_checked(image_bytes(source, "PNG"), MAX_PIXELS), 500, 320)
    direct = source.resize((500, 333), Image.Resampling.LANCZOS)
    difference = np.abs(np.asarray(decoded.rgb, dtype=np.int16) - np.asarray(direct, dtype=np.int16))
    assert difference.mean() < 1.0


# ----------------------------------------------------------------------------- (2) PNG text


def test_png_text_over_the_cap_is_refused_with_the_reason(client):
    response = client.post("/api/bg/remove", data=upload(_png_with_ztxt(3, 300 * 1024), "text.png"))
    message = assert_json_error(response, 413)
    assert "zTXt" in message and "256 KB" in message


def test_png_with_modest_text_is_served(client):
    response = client.post("/api/bg/remove", data=upload(_png_with_ztxt(3, 20 * 1024), "text.png"))
    assert response.status_code == 200, response.get_json()


def test_a_checked_header_holds_no_pixels_text_or_exif():
    header = imaging.open_checked(_png_with_ztxt(3, 20 * 1024), MAX_PIXELS)
    assert isinstance(header, imaging.Header) and not isinstance(header, Image.Image)
    assert set(vars(header)) == {"stream", "format", "size", "mode", "frames", "orientation", "decode_bytes"}


# ----------------------------------------------------------------------------- (4) MPO


def _mpo(first: Image.Image, second: Image.Image) -> bytes:
    buffer = io.BytesIO()
    first.save(buffer, "MPO", save_all=True, append_images=[second], quality=95)
    return buffer.getvalue()


@pytest.mark.parametrize("path", ["/api/bg/remove", "/api/bg/change_color"])
def test_mpo_is_served_from_its_first_picture(client, path):
    data = _mpo(Image.new("RGB", (64, 48), (220, 30, 30)), Image.new("RGB", (32, 24), (30, 30, 220)))
    assert Image.open(io.BytesIO(data)).format == "MPO"
    response = client.post(path, data=upload(data, "phone.jpg"))
    assert response.status_code == 200, response.get_json()
    result = Image.open(io.BytesIO(response.data))
    assert result.size == (64, 48)  # the first picture's size; the second is 32x24


def test_large_mpo_is_decoded_at_reduced_scale(large_photo):
    data = _mpo(large_photo, photo((400, 300)))
    header = imaging.open_checked(data, MAX_PIXELS)
    assert header.format == "JPEG" and header.frames == 2
    decoded = imaging.decode(header, 1024, 320)
    assert decoded.rgb.size == (1024, 768)


# ----------------------------------------------------------------------------- (5) clear_cache under load


class SlowRuns:
    """A real session whose every run sleeps first, so the model that queued requests reload stays slow."""

    def __init__(self, session, seconds: float) -> None:
        self._session, self._seconds = session, seconds

    def __getattr__(self, name: str):
        return getattr(self._session, name)

    def run(self, *args):
        time.sleep(self._seconds)
        return self._session.run(*args)


def test_clear_cache_under_load_fails_no_queued_request(make_app, monkeypatch):
    create_session = isnet_tiny_service.create_session
    monkeypatch.setattr(isnet_tiny_service, "create_session", lambda *args: SlowRuns(create_session(*args), 0.4))
    app, service, _ = loaded_with_slow_session(make_app, 0.4, MAX_QUEUE="8", QUEUE_TIMEOUT_S="60")
    data = image_bytes(photo(), "PNG")
    codes: list[int] = []

    def one() -> None:
        codes.append(app.test_client().post("/api/bg/remove", data=upload(data)).status_code)

    threads = [threading.Thread(target=one) for _ in range(5)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while service.queue_length < 3 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert service.queue_length >= 3
    cleared = app.test_client().post("/api/bg/clear_cache")
    done_when_cleared = len(codes)
    for thread in threads:
        thread.join()
    assert cleared.status_code == 200 and cleared.get_json()["status"] == "cleared"
    assert done_when_cleared < 4, "clear_cache waited for the queue instead of the running inference only"
    assert codes == [200] * 5
    assert service.loaded and service.stats.inferences >= 5


def test_clear_cache_when_idle_unloads_and_the_next_request_reloads(client, app):
    assert client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG"))).status_code == 200
    client.post("/api/bg/clear_cache")
    assert not app.extensions["isnet_tiny"].loaded
    assert client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG"))).status_code == 200


# ----------------------------------------------------------------------------- (6) 413 names the limit


def test_413_for_a_large_text_field_names_that_limit(make_app):
    """Text fields may hold an image as base64: the limit is its base64 size (1 MB -> 1,399 KB), not the upload's."""
    client = make_app(MAX_FILE_SIZE_MB="1").test_client()
    response = client.post("/api/bg/remove", data={"image_file_b64": "A" * 1_400_000},
                           content_type="multipart/form-data")
    message = assert_json_error(response, 413)
    assert "text form field" in message and "1399 KB" in message and "1 MB" not in message


def test_413_for_too_many_parts_names_that_limit(client):
    fields = {f"f{i}": "1" for i in range(5000)}
    response = client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG"), **fields))
    message = assert_json_error(response, 413)
    assert "1000 parts" in message and "8 MB" not in message


def test_413_for_a_large_upload_names_the_size_limit(client):
    response = client.post("/api/bg/remove", data=upload(b"\0" * (9 * 1024 * 1024), "big.png"))
    assert "8 MB" in assert_json_error(response, 413)
