"""Fully transparent pixels carry no colour, in every output with alpha (issue 12, point 1).

The uploads here have their own transparent half over saturated red, so pixels with alpha 0 exist
whatever the model does (so those tests run on the disc model; the real photo on the bundled u2netp):
the output must have RGB 0 there, or dropping the alpha channel would bring back what was removed.
"""
import io

import numpy as np
import pytest
from PIL import Image

from app import imaging
from tests.conftest import FIXTURES, image_bytes, photo, upload


def half_hidden(size: tuple[int, int] = (96, 64)) -> bytes:
    """A photo whose left half is fully transparent over pure red (the 'removed' scene)."""
    image = photo(size).convert("RGBA")
    pixels = np.asarray(image).copy()
    pixels[:, : size[0] // 2] = (255, 0, 0, 0)
    return image_bytes(Image.fromarray(pixels, "RGBA"), "PNG")


def assert_no_colour_where_transparent(data: bytes) -> int:
    """RGB == 0 wherever alpha == 0; returns how many such pixels there are (so a test can insist on some)."""
    image = Image.open(io.BytesIO(data))
    assert image.mode == "RGBA", image.mode
    pixels = np.asarray(image)
    hidden = pixels[..., 3] == 0
    assert not pixels[..., :3][hidden].any(), "colour left under fully transparent pixels"
    return int(hidden.sum())


def test_cutout_zeroes_colour_only_where_alpha_is_zero():
    rgb = Image.new("RGB", (4, 1), (200, 100, 50))
    alpha = Image.frombytes("L", (4, 1), bytes([0, 1, 128, 255]))
    pixels = np.asarray(imaging.cutout(rgb, alpha))
    assert pixels.tolist() == [[[0, 0, 0, 0], [200, 100, 50, 1], [200, 100, 50, 128], [200, 100, 50, 255]]]


def test_clear_transparent_keeps_an_image_without_transparent_pixels():
    image = Image.new("RGBA", (3, 3), (10, 20, 30, 1))
    assert imaging.clear_transparent(image) is image


def test_over_a_fully_transparent_colour_stays_colourless():
    rgb = Image.new("RGB", (2, 1), (200, 100, 50))
    alpha = Image.frombytes("L", (2, 1), bytes([0, 255]))
    composed = imaging.over_background(rgb, alpha, imaging.solid((2, 1), (0, 255, 0, 0)))
    assert np.asarray(composed).tolist() == [[[0, 0, 0, 0], [200, 100, 50, 255]]]


@pytest.mark.parametrize("fmt", ["PNG", "WEBP"])
def test_encoders_keep_transparent_pixels_colourless_and_alpha_exact(fmt):
    source = Image.open(io.BytesIO(half_hidden()))
    cut = imaging.clear_transparent(source)
    decoded = np.asarray(Image.open(io.BytesIO(imaging.encode(cut, fmt))).convert("RGBA"))
    assert np.array_equal(decoded[..., 3], np.asarray(cut)[..., 3])
    assert assert_no_colour_where_transparent(imaging.encode(cut, fmt)) >= 96 * 64 // 2


@pytest.mark.disc_model
@pytest.mark.parametrize("fields", [
    {"format": "png"}, {"format": "webp"}, {"crop": "true"}, {"crop": "true", "format": "webp"},
])
def test_remove_outputs_have_no_colour_under_transparency(client, fields):
    response = client.post("/api/bg/remove", data=upload(half_hidden(), "hidden.png", **fields))
    assert response.status_code == 200, response.get_json()
    assert assert_no_colour_where_transparent(response.data) > 0


@pytest.mark.disc_model
@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_translucent_change_color_has_no_colour_under_transparency(client, fmt):
    response = client.post("/api/bg/change_color", data=upload(half_hidden(), "h.png", color="#00FF0000", format=fmt))
    assert response.status_code == 200, response.get_json()
    assert assert_no_colour_where_transparent(response.data) >= 96 * 64 // 2


@pytest.mark.disc_model
def test_only_mask_stays_a_grayscale_image(client):
    response = client.post("/api/bg/remove", data=upload(half_hidden(), "h.png", only_mask="true"))
    mask = Image.open(io.BytesIO(response.data))
    assert mask.mode == "L" and np.asarray(mask)[:, :48].max() == 0


@pytest.mark.parametrize("fmt", ["png", "webp"])
def test_a_real_photo_cutout_hides_the_scene(client, fmt):
    """car-1 with the bundled model: many fully transparent pixels, none with colour.

    For WebP this also catches libwebp's own clean-up, which without `exact` fills transparent
    pixels with colours predicted from their neighbours.
    """
    data = (FIXTURES / "images" / "car-1.jpg").read_bytes()
    response = client.post("/api/bg/remove", data=upload(data, "car-1.jpg", format=fmt))
    assert assert_no_colour_where_transparent(response.data) > 10_000
