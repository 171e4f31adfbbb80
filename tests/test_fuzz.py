"""Property-based: random bytes, truncated files and random valid images only ever give 200 or 4xx JSON.

On the 64 px disc model (conftest's disc_onnx): these are about decoding and error paths, not masks.
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.conftest import image_bytes, upload

pytestmark = pytest.mark.disc_model

FORMATS = ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"]
MODES = ["RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16"]


@st.composite
def images(draw: st.DrawFn) -> bytes:
    width = draw(st.integers(1, 300))
    height = draw(st.integers(1, 300))
    fmt = draw(st.sampled_from(FORMATS))
    mode = draw(st.sampled_from(MODES))
    seed = draw(st.integers(0, 2**32 - 1))
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image.convert("L"), dtype=np.uint16) * 257)
    else:
        image = image.convert(mode)
    try:
        data = image_bytes(image, fmt)
    except (OSError, ValueError, KeyError):
        data = image_bytes(image.convert("RGB"), fmt)
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    return data if cut is None else data[:cut]


def check(client, data: bytes, name: str, folders: list[Path]) -> None:
    for path, fields in (("/api/bg/remove", {}), ("/api/bg/change_color", {"color": "#123456"})):
        response = client.post(path, data=upload(data, name, **fields))
        assert response.status_code in (200, 400, 413, 415, 422), (response.status_code, response.data[:200])
        if response.status_code == 200:
            Image.open(io.BytesIO(response.data)).verify()
        else:
            assert set(response.get_json()) == {"error", "request_id"}
    for folder in folders:
        assert list(folder.iterdir()) == []


FUZZ = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=images())
def test_random_images_and_truncations(client, env, data: bytes):
    check(client, data, "fuzz.png", [Path(env["UPLOAD_FOLDER"]), Path(env["PROCESSED_FOLDER"])])


@FUZZ
@given(data=st.binary(max_size=4096), name=st.sampled_from(["a.png", "a.jpg", "a", "a.webp", "a.gif"]))
def test_random_bytes(client, env, data: bytes, name: str):
    check(client, data, name, [Path(env["UPLOAD_FOLDER"]), Path(env["PROCESSED_FOLDER"])])
