"""The optional output options on /remove and /change_color; defaults stay as the seed's contract.

On the 64 px disc model (the disc_model mark), which finds photo()'s disc; the photo's cutout
(WebP against PNG) runs the bundled u2netp.
"""
import io

import numpy as np
import pytest
from PIL import Image

from tests.conftest import FIXTURES, image_bytes, photo, upload
from tests.test_api import BUNDLED, assert_json_error

pytestmark = pytest.mark.disc_model

PHOTO = image_bytes(photo((96, 64)), "PNG")


def post(client, path: str, **fields: str):
    return client.post(path, data=upload(PHOTO, "pic.png", **fields))


@pytest.mark.parametrize("fmt, mimetype, pil, ext", [
    ("png", "image/png", "PNG", "png"), ("webp", "image/webp", "WEBP", "webp"),
    ("jpeg", "image/jpeg", "JPEG", "jpg"), ("JPG", "image/jpeg", "JPEG", "jpg"),
])
def test_format_on_remove(client, fmt, mimetype, pil, ext):
    response = post(client, "/api/bg/remove", format=fmt)
    assert response.status_code == 200 and response.mimetype == mimetype
    assert f"nobg_pic.{ext}" in response.headers["Content-Disposition"]
    image = Image.open(io.BytesIO(response.data))
    assert image.format == pil
    if pil == "WEBP":
        assert image.mode == "RGBA" and np.asarray(image.getchannel("A")).min() < 64


def test_webp_is_smaller_than_png_for_a_photo(make_app):
    client = make_app(**BUNDLED).test_client()
    photo_bytes = (FIXTURES / "images" / "animal-1.jpg").read_bytes()
    png = client.post("/api/bg/remove", data=upload(photo_bytes, "a.jpg"))
    webp = client.post("/api/bg/remove", data=upload(photo_bytes, "a.jpg", format="webp"))
    # Lossless (so transparent pixels stay colourless): ~0.6x the PNG here, not the lossy ~0.2x.
    assert len(webp.data) < len(png.data) * 0.75


def test_bad_format_names_the_accepted_values(client):
    message = assert_json_error(post(client, "/api/bg/remove", format="gif"), 400)
    assert "png, webp, jpeg" in message


def test_only_mask_is_8bit_grayscale_png(client):
    response = post(client, "/api/bg/remove", only_mask="true")
    mask = Image.open(io.BytesIO(response.data))
    assert response.mimetype == "image/png" and mask.mode == "L" and mask.size == (96, 64)
    assert "mask_pic.png" in response.headers["Content-Disposition"]
    assert mask.getextrema()[0] < 64 and mask.getextrema()[1] > 192


def test_bad_boolean_is_400(client):
    assert "only_mask" in assert_json_error(post(client, "/api/bg/remove", only_mask="maybe"), 400)


def test_crop_to_subject_with_margins(client):
    full = Image.open(io.BytesIO(post(client, "/api/bg/remove").data))
    tight = Image.open(io.BytesIO(post(client, "/api/bg/remove", crop="true").data))
    px = Image.open(io.BytesIO(post(client, "/api/bg/remove", crop="1", crop_margin="5px").data))
    pct = Image.open(io.BytesIO(post(client, "/api/bg/remove", crop="1", crop_margin="10%").data))
    assert tight.width < full.width and tight.height <= full.height
    assert px.width == min(full.width, tight.width + 10)
    assert tight.width < pct.width <= full.width


@pytest.mark.parametrize("margin", ["ten", "5em", "-3", "2000px", "150%"])
def test_bad_crop_margin_is_400(client, margin):
    assert "crop_margin" in assert_json_error(post(client, "/api/bg/remove", crop="true", crop_margin=margin), 400)


def test_max_dimension_per_request(client):
    response = post(client, "/api/bg/remove", max_dimension="48")
    assert Image.open(io.BytesIO(response.data)).size == (48, 32)
    assert "1024" in assert_json_error(post(client, "/api/bg/remove", max_dimension="5000"), 400)
    assert_json_error(post(client, "/api/bg/remove", max_dimension="0"), 400)
    assert_json_error(post(client, "/api/bg/remove", max_dimension="big"), 400)


@pytest.mark.parametrize("color, rgb", [("rebeccapurple", (102, 51, 153)), ("white", (255, 255, 255))])
def test_css_colour_names(client, color, rgb):
    response = post(client, "/api/bg/change_color", color=color)
    assert response.mimetype == "image/jpeg"
    corner = Image.open(io.BytesIO(response.data)).getpixel((1, 1))
    assert all(abs(a - b) < 12 for a, b in zip(corner, rgb))


def test_translucent_colour_gives_png_with_alpha(client):
    response = post(client, "/api/bg/change_color", color="#FF000080")
    image = Image.open(io.BytesIO(response.data))
    assert response.mimetype == "image/png" and image.mode == "RGBA"
    red, _, _, alpha = image.getpixel((1, 1))
    assert red > 200 and 100 < alpha < 160
    webp = post(client, "/api/bg/change_color", color="#FF000080", format="webp")
    assert webp.mimetype == "image/webp"
    assert "JPEG" in assert_json_error(post(client, "/api/bg/change_color", color="#FF000080", format="jpeg"), 400)


def test_bg_image_is_scaled_to_cover(client):
    backdrop = image_bytes(Image.new("RGB", (20, 200), (0, 0, 255)), "PNG")
    response = client.post("/api/bg/change_color", data={**upload(PHOTO, "pic.png"), "bg_image": (io.BytesIO(backdrop), "bg.png")})
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    result = Image.open(io.BytesIO(response.data))
    assert result.size == (96, 64)
    red, green, blue = result.getpixel((1, 1))
    assert blue > 200 and red < 60 and green < 60


def test_bg_image_errors(client):
    both = {**upload(PHOTO, "pic.png", color="#000"), "bg_image": (io.BytesIO(PHOTO), "bg.png")}
    assert "either" in assert_json_error(client.post("/api/bg/change_color", data=both), 400)
    text = {**upload(PHOTO, "pic.png"), "bg_image": (io.BytesIO(b"not an image at all"), "bg.png")}
    assert_json_error(client.post("/api/bg/change_color", data=text), 415)


def test_options_combine_on_change_color(client):
    response = post(client, "/api/bg/change_color", color="0,255,0", crop="true", format="png", max_dimension="64")
    image = Image.open(io.BytesIO(response.data))
    assert response.mimetype == "image/png" and max(image.size) <= 64 and image.mode == "RGB"
    assert "only_mask" in assert_json_error(post(client, "/api/bg/change_color", only_mask="yes"), 400)
