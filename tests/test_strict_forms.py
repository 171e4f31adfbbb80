"""Strict forms (issue 12, point 2): unknown or misplaced fields are 400s that name the field and list
what the endpoint accepts; `bg_color` is another name for `color`; exactly one image source."""
import io

import pytest
from PIL import Image

from tests.conftest import image_bytes, photo, upload
from tests.test_api import assert_json_error

PHOTO = image_bytes(photo((64, 48)), "PNG")
OPTIONS = "format, crop, crop_margin, max_dimension, max_megapixels, roi, scale, position, semitransparency, refine, decontaminate"
REMOVE_FIELDS = f"file, image_url, image_file_b64, {OPTIONS}, only_mask"
CHANGE_FIELDS = f"file, image_url, image_file_b64, {OPTIONS}, color, bg_color, bg_image"


def post(client, path: str, **fields):
    return client.post(path, data=upload(PHOTO, "pic.png", **fields))


def test_unknown_field_is_named_with_a_suggestion_and_the_accepted_list(client):
    message = assert_json_error(post(client, "/api/bg/change_color", colour="red"), 400)
    assert "unknown field 'colour'" in message and "did you mean 'color'?" in message
    assert CHANGE_FIELDS in message
    message = assert_json_error(post(client, "/api/bg/remove", foo="1"), 400)
    assert "'foo'" in message and REMOVE_FIELDS in message and "did you mean" not in message


@pytest.mark.parametrize("path, fields, named", [
    ("/api/bg/remove", {"bg_image": (io.BytesIO(PHOTO), "bg.png")}, "bg_image"),
    ("/api/bg/remove", {"color": "red"}, "color"),
    ("/api/bg/remove", {"bg_color": "red"}, "bg_color"),
    ("/api/bg/change_color", {"only_mask": "true"}, "only_mask"),
    ("/api/bg/change_color", {"only_mask": "false"}, "only_mask"),
])
def test_a_field_of_the_other_endpoint_is_400(client, path, fields, named):
    message = assert_json_error(client.post(path, data={**upload(PHOTO, "pic.png"), **fields}), 400)
    assert f"'{named}' is not accepted here" in message
    assert "change_color" in message if path.endswith("remove") else "/api/bg/remove" in message


@pytest.mark.parametrize("fields", [{"crop_margin": "10"}, {"crop_margin": "5%", "crop": "false"}])
def test_crop_margin_without_crop_is_400(client, fields):
    assert "crop=true" in assert_json_error(post(client, "/api/bg/remove", **fields), 400)


def test_an_empty_crop_margin_without_crop_is_no_margin(client):
    assert post(client, "/api/bg/remove", crop_margin="").status_code == 200


def test_bg_color_is_another_name_for_color(client):
    response = post(client, "/api/bg/change_color", bg_color="#00FF00")
    assert response.status_code == 200
    red, green, blue = Image.open(io.BytesIO(response.data)).getpixel((1, 1))
    assert green > 200 and red < 60 and blue < 60
    assert "not both" in assert_json_error(post(client, "/api/bg/change_color", color="red", bg_color="red"), 400)
    assert "#RRGGBB" in assert_json_error(post(client, "/api/bg/change_color", bg_color="blurple"), 400)
    both = {**upload(PHOTO, "pic.png", bg_color="#000"), "bg_image": (io.BytesIO(PHOTO), "bg.png")}
    assert "bg_image" in assert_json_error(client.post("/api/bg/change_color", data=both), 400)


def test_text_and_file_fields_must_be_of_their_kind(client):
    message = assert_json_error(client.post("/api/bg/remove", data={"file": "photo.jpg"}), 400)
    assert "file part" in message and "-F file=@photo.jpg" in message and "image_url" in message
    bg_text = {**upload(PHOTO, "pic.png"), "bg_image": "beach.jpg"}
    assert "file part" in assert_json_error(client.post("/api/bg/change_color", data=bg_text), 400)
    format_file = {**upload(PHOTO, "pic.png"), "format": (io.BytesIO(b"png"), "format.txt")}
    assert "text field" in assert_json_error(client.post("/api/bg/remove", data=format_file), 400)
    url_file = {"image_url": (io.BytesIO(b"http://example.com/a.png"), "u.txt")}
    assert "text field" in assert_json_error(client.post("/api/bg/remove", data=url_file), 400)


def test_a_field_sent_twice_is_400(client):
    twice = {**upload(PHOTO, "pic.png"), "color": ["red", "blue"]}
    assert "more than once" in assert_json_error(client.post("/api/bg/change_color", data=twice), 400)
    two_files = {"file": [(io.BytesIO(PHOTO), "a.png"), (io.BytesIO(PHOTO), "b.png")]}
    assert "more than once" in assert_json_error(client.post("/api/bg/remove", data=two_files), 400)


@pytest.mark.parametrize("fields, words", [
    ({}, "no image"),
    ({"format": "png"}, "no image"),
    ({"image_url": "http://example.com/a.png", "image_file_b64": "QUJD"}, "image_url and image_file_b64"),
])
def test_exactly_one_image_source(client, fields, words):
    message = assert_json_error(client.post("/api/bg/remove", data=fields), 400)
    assert words in message


def test_file_and_image_url_together_are_400(client):
    data = upload(PHOTO, "pic.png", image_url="http://example.com/a.png")
    assert "file and image_url" in assert_json_error(client.post("/api/bg/remove", data=data), 400)


def test_option_errors_come_before_fetching(client, monkeypatch):
    """A bad option is refused without downloading anything."""
    from app import image_source

    monkeypatch.setattr(image_source, "fetch", lambda *a, **k: pytest.fail("fetched despite a bad option"))
    assert "format" in assert_json_error(
        client.post("/api/bg/remove", data={"image_url": "http://example.com/a.png", "format": "gif"}), 400)
    both = {"image_url": "http://example.com/a.png", "color": "red", "bg_image": (io.BytesIO(PHOTO), "bg.png")}
    assert "not both" in assert_json_error(client.post("/api/bg/change_color", data=both), 400)
    assert "colour" in assert_json_error(
        client.post("/api/bg/change_color", data={"image_url": "http://example.com/a.png", "colour": "red"}), 400)


def test_every_accepted_field_together_still_works(client):
    remove = post(client, "/api/bg/remove", format="webp", crop="true", crop_margin="2", max_dimension="32",
                  only_mask="false")
    assert remove.status_code == 200 and remove.mimetype == "image/webp"
    change = client.post("/api/bg/change_color", data={
        **upload(PHOTO, "pic.png", format="png", crop="1", crop_margin="5%", max_dimension="40"),
        "bg_image": (io.BytesIO(PHOTO), "bg.png")})
    assert change.status_code == 200 and change.mimetype == "image/png"
