"""/api/bg/* with JSON bodies and query-string options (same strict checks as the form), and the pipeline
options the remove.bg translation needed, used directly: roi, scale / position, max_megapixels,
semitransparency, formats auto and zip, 2- and 4-value crop margins; also from `flask remove`.
"""
from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests.conftest import image_bytes, photo, upload
from tests.test_api import assert_json_error

PHOTO = image_bytes(photo((96, 64)), "PNG")
B64 = base64.b64encode(PHOTO).decode()


def opened(response) -> Image.Image:
    assert response.status_code == 200, response.data[:300]
    return Image.open(io.BytesIO(response.data))


# ---------------------------------------------------------------- JSON bodies and the query string

def test_json_body_with_booleans_and_numbers(client):
    response = client.post("/api/bg/remove", json={"image_file_b64": B64, "crop": True, "max_dimension": 48,
                                                   "only_mask": False, "format": "png"})
    image = opened(response)
    assert image.mode == "RGBA" and image.width < 48
    colored = client.post("/api/bg/change_color", json={"image_file_b64": B64, "color": "red", "crop": False})
    assert opened(colored).convert("RGB").getpixel((0, 0)) == pytest.approx((255, 0, 0), abs=3)


def test_json_nulls_are_not_sent(client):
    assert opened(client.post("/api/bg/remove", json={"image_file_b64": B64, "format": None})).format == "PNG"


def test_json_is_as_strict_as_the_form(client):
    message = assert_json_error(client.post("/api/bg/remove", json={"image_file_b64": B64, "colour": "red"}), 400)
    assert "unknown field 'colour'" in message
    message = assert_json_error(client.post("/api/bg/remove", json={"file": B64}), 400)
    assert "file part" in message and "JSON" in message
    assert "array" in assert_json_error(client.post("/api/bg/remove", json={"image_file_b64": [B64]}), 400)
    assert "object" in assert_json_error(client.post("/api/bg/remove", json=[B64]), 400)
    bad = client.post("/api/bg/remove", data=b"{oops", content_type="application/json")
    assert "not valid JSON" in assert_json_error(bad, 400)
    assert "only_mask" in assert_json_error(client.post("/api/bg/remove", json={"image_file_b64": B64,
                                                                               "only_mask": "maybe"}), 400)


def test_query_string_options_beside_a_form(client):
    response = client.post("/api/bg/remove?format=webp&max_dimension=48", data=upload(PHOTO, "pic.png"))
    assert response.mimetype == "image/webp" and opened(response).size == (48, 32)
    response = client.post(f"/api/bg/remove?image_file_b64={B64.replace('+', '%2B').replace('/', '%2F')}")
    assert opened(response).size == (96, 64)


def test_query_string_is_checked_like_the_form(client):
    twice = client.post("/api/bg/remove?format=png", data=upload(PHOTO, "pic.png", format="webp"))
    assert "more than once" in assert_json_error(twice, 400)
    assert "unknown field 'fmt'" in assert_json_error(client.post("/api/bg/remove?fmt=png",
                                                                  data=upload(PHOTO, "pic.png")), 400)
    assert "file part" in assert_json_error(client.post("/api/bg/remove?file=x"), 400)


def test_urlencoded_body(client):
    response = client.post("/api/bg/remove", data={"image_file_b64": B64, "format": "jpeg"},
                           content_type="application/x-www-form-urlencoded")
    assert response.mimetype == "image/jpeg"


# ---------------------------------------------------------------- the new options on /api/bg

def post(client, path: str = "/api/bg/remove", **fields: str):
    return client.post(path, data=upload(PHOTO, "pic.png", **fields))


def test_format_auto_and_zip(client):
    assert post(client, format="auto").mimetype == "image/png"
    assert post(client, "/api/bg/change_color", format="auto").mimetype == "image/jpeg"
    assert post(client, "/api/bg/change_color", format="auto", color="#ff000080").mimetype == "image/png"
    response = post(client, format="zip")
    assert response.mimetype == "application/zip" and "nobg_pic.zip" in response.headers["Content-Disposition"]
    names = zipfile.ZipFile(io.BytesIO(response.data)).namelist()
    assert sorted(names) == ["alpha.png", "color.jpg"]
    assert "zip" in assert_json_error(post(client, format="tiff"), 400)


def test_max_megapixels(client):
    image = opened(post(client, max_megapixels="0.0015"))
    assert image.width * image.height <= 1500 and image.width * image.height > 1400
    assert opened(post(client, max_megapixels="0.0015", max_dimension="20")).size == (20, 13)
    for bad in ("0", "lots", "5000"):
        assert "max_megapixels" in assert_json_error(post(client, max_megapixels=bad), 400)


def test_roi_semitransparency_scale_and_position(client):
    mask = np.asarray(opened(post(client, only_mask="true", roi="50% 0% 100% 100%")))
    assert mask[:, :48].max() == 0 and mask[:, 48:].max() > 200
    hard = np.asarray(opened(post(client, only_mask="true", semitransparency="false")))
    assert set(np.unique(hard)) <= {0, 255}
    placed = np.asarray(opened(post(client, only_mask="true", scale="50%", position="0% 0%")))
    rows, cols = np.nonzero(placed > 10)
    assert rows.min() == 0 and cols.min() == 0 and rows.max() + 1 == pytest.approx(32, abs=2)
    for field, value in (("roi", "1 2 3"), ("scale", "200%"), ("position", "top"), ("semitransparency", "kinda")):
        assert field in assert_json_error(post(client, **{field: value}), 400)


def test_crop_margin_two_and_four_values(client):
    tight = opened(post(client, crop="true"))
    four = opened(post(client, crop="true", crop_margin="1 2 3 4"))
    assert four.size == (tight.width + 6, tight.height + 4)
    two = opened(post(client, crop="true", crop_margin="10% 0"))
    assert two.width == tight.width and two.height == pytest.approx(tight.height * 1.2, abs=2)


def test_status_lists_the_formats(client):
    assert client.get("/api/bg/status").get_json()["output_formats"] == ["png", "webp", "jpeg", "auto", "zip"]


def test_flask_remove_takes_the_same_options(make_app, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    (source / "a.png").write_bytes(PHOTO)
    result = make_app().test_cli_runner().invoke(args=[
        "remove", str(source), "--out", str(tmp_path / "out"), "--format", "zip", "--max-megapixels", "0.0015",
        "--roi", "0 0 50% 100%", "--no-semitransparency", "--scale", "80%", "--position", "center"])
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(tmp_path / "out" / "nobg_a.zip") as archive:
        alpha = np.asarray(Image.open(io.BytesIO(archive.read("alpha.png"))))
    assert alpha.size <= 1500 and set(np.unique(alpha)) <= {0, 255}
    bad = make_app().test_cli_runner().invoke(args=["remove", str(source), "--scale", "2%"])
    assert bad.exit_code == 2 and "--scale" in bad.output
