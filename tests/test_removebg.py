"""POST /v1.0/removebg and GET /v1.0/account: remove.bg's API on the one pipeline (issue 18).

Each field, size, format, header and error of ../shared/docs/removebg-contract.md, in every body kind
clients send (multipart, urlencoded, JSON with real booleans), against the bundled u2netp.
"""
from __future__ import annotations

import base64
import io
import zipfile
from typing import Callable, Iterator

import numpy as np
import pytest
from PIL import Image

from tests.conftest import image_bytes, photo, served

PHOTO = image_bytes(photo((96, 64)), "PNG")
B64 = base64.b64encode(PHOTO).decode()


def image_server(files: dict[str, bytes]) -> Callable:
    """A WSGI app serving `files` by path (image/png), 404 otherwise."""

    def app(environ: dict, start_response: Callable) -> list[bytes]:
        body = files.get(environ["PATH_INFO"])
        if body is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"missing"]
        start_response("200 OK", [("Content-Type", "image/png"), ("Content-Length", str(len(body)))])
        return [body]

    return app


@pytest.fixture
def images() -> Iterator[str]:
    with served(image_server({"/photo.png": PHOTO, "/bg.png": image_bytes(Image.new("RGB", (40, 40), "red"), "PNG")})) as base:
        yield base


@pytest.fixture
def open_client(make_app):
    """image_url and bg_image_url may reach the loopback image server (as in test_image_source.py)."""
    return make_app(IMAGE_URL_ALLOW_PRIVATE="1").test_client()


def post(client, accept: str | None = None, json: dict | None = None, **fields):
    headers = {"Accept": accept} if accept else {}
    if json is not None:
        return client.post("/v1.0/removebg", json=json, headers=headers)
    return client.post("/v1.0/removebg", data=fields, headers=headers)


def upload(**fields) -> dict:
    return {"image_file": (io.BytesIO(PHOTO), "photo.png"), **fields}


def error(response, status: int, code: str) -> dict:
    """remove.bg's error shape: {"errors": [{"title", "code", "detail"}]} with this status and code."""
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"errors"} and len(body["errors"]) == 1
    item = body["errors"][0]
    assert set(item) == {"title", "code", "detail"} and item["title"] and item["detail"]
    assert item["code"] == code, item
    assert "Traceback" not in item["detail"]
    return item


def opened(response) -> Image.Image:
    assert response.status_code == 200, response.data[:300]
    return Image.open(io.BytesIO(response.data))


# ---------------------------------------------------------------- sources and bodies

def test_multipart_file_whose_part_has_no_extension_and_no_content_type(client):
    body = (b"--b\r\nContent-Disposition: form-data; name=\"image_file\"; filename=\"blob\"\r\n\r\n" + PHOTO
            + b"\r\n--b\r\nContent-Disposition: form-data; name=\"size\"\r\n\r\nauto\r\n--b--\r\n")
    response = client.post("/v1.0/removebg", data=body, content_type="multipart/form-data; boundary=b")
    image = opened(response)
    assert image.format == "PNG" and image.mode == "RGBA" and image.size == (96, 64)
    assert response.mimetype == "image/png"


def test_image_url_urlencoded(open_client, images):
    image = opened(post(open_client, image_url=f"{images}/photo.png", size="full"))
    assert image.mode == "RGBA" and image.size == (96, 64)


def test_image_url_keeps_the_ssrf_guard(client, images):
    item = error(post(client, image_url=f"{images}/photo.png"), 400, "failed_image_download")
    assert "loopback" in item["detail"]


def test_image_url_that_fails_is_failed_image_download(open_client, images):
    assert "404" in error(post(open_client, image_url=f"{images}/nothing.png"), 400, "failed_image_download")["detail"]


def test_image_file_b64_urlencoded_and_json(client):
    assert opened(post(client, image_file_b64=B64)).size == (96, 64)
    assert opened(post(client, json={"image_file_b64": B64})).size == (96, 64)


def test_json_with_real_booleans_numbers_and_nulls(client):
    """What a JavaScript client sends: every field, booleans as JSON booleans, unset ones as null."""
    body = {"image_file_b64": B64, "size": "preview", "type": "auto", "crop": False, "add_shadow": False,
            "semitransparency": True, "scale": None, "position": None, "roi": "0 0 100% 100%", "bg_color": None,
            "channels": "rgba", "format": "auto", "crop_margin": "0px", "type_level": "none"}
    response = post(client, json=body)
    assert opened(response).mode == "RGBA"
    cropped = opened(post(client, json={**body, "crop": True}))
    assert cropped.width < 96


def test_json_errors_keep_the_shape(client):
    response = client.post("/v1.0/removebg", data=b"{not json", content_type="application/json")
    assert "JSON" in error(response, 400, "invalid_request")["detail"]
    error(post(client, json={"image_file_b64": B64, "roi": [0, 0, 1, 1]}), 400, "invalid_request")
    response = post(client, json={"image_file": B64})
    assert "multipart" in error(response, 400, "invalid_request")["detail"]


def test_missing_and_multiple_sources(client):
    assert error(post(client, size="auto"), 400, "missing_source")["title"] == "No image given"
    error(post(client, **upload(image_file_b64=B64)), 400, "multiple_sources")


def test_unknown_parameter(client):
    assert "shadow_method" in error(post(client, **upload(shadow_method="drop")), 400, "unknown_parameter")["detail"]


def test_not_an_image_is_invalid_file(client):
    error(post(client, image_file=(io.BytesIO(b"hello, not an image"), "x")), 400, "invalid_file")
    error(post(client, image_file_b64="!!!"), 400, "invalid_file")


# ---------------------------------------------------------------- size

def test_preview_small_and_regular_are_a_quarter_megapixel(client):
    big = image_bytes(photo((1000, 750)), "JPEG")
    for size in ("preview", "small", "regular", None):
        fields = {"image_file": (io.BytesIO(big), "big.jpg"), **({"size": size} if size else {})}
        image = opened(post(client, **fields))
        assert image.width * image.height <= 250_000
        assert image.width * image.height > 240_000 and abs(image.width / image.height - 4 / 3) < 0.01


@pytest.mark.parametrize("size, pixels", [("medium", 1_500_000), ("hd", 3_000_000), ("full", 3_000_000),
                                          ("4k", 3_000_000), ("auto", 3_000_000)])
def test_larger_sizes(make_app, size, pixels):
    client = make_app(MAX_DIMENSION="2000").test_client()
    big = image_bytes(photo((2000, 1500)), "JPEG", quality=70)
    response = post(client, image_file=(io.BytesIO(big), "big.jpg"), size=size, format="jpg")
    image = opened(response)
    assert image.width * image.height <= pixels and image.width * image.height > pixels * 0.99
    assert response.headers["X-Width"] == str(image.width) and response.headers["X-Height"] == str(image.height)


def test_full_is_capped_by_the_servers_max_dimension(client):
    image = opened(post(client, image_file=(io.BytesIO(image_bytes(photo((1500, 1000)), "JPEG")), "a.jpg"),
                        size="full"))
    assert image.size == (1024, 683)


def test_invalid_size(client):
    assert "preview" in error(post(client, **upload(size="huge")), 400, "invalid_size")["detail"]


# ---------------------------------------------------------------- format and channels

def test_format_auto_is_png_with_transparency_and_jpeg_without(client):
    response = post(client, **upload())
    assert response.mimetype == "image/png" and opened(response).mode == "RGBA"
    response = post(client, **upload(bg_color="00ff00"))
    assert response.mimetype == "image/jpeg" and opened(response).mode == "RGB"


@pytest.mark.parametrize("fmt, mimetype, pil", [("png", "image/png", "PNG"), ("jpg", "image/jpeg", "JPEG"),
                                                ("webp", "image/webp", "WEBP")])
def test_formats(client, fmt, mimetype, pil):
    response = post(client, **upload(format=fmt))
    assert response.mimetype == mimetype and opened(response).format == pil


def test_zip_holds_color_jpg_and_alpha_png(client):
    response = post(client, **upload(format="zip"))
    assert response.status_code == 200 and response.mimetype == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        assert sorted(archive.namelist()) == ["alpha.png", "color.jpg"]
        color = Image.open(io.BytesIO(archive.read("color.jpg")))
        alpha = Image.open(io.BytesIO(archive.read("alpha.png")))
    assert color.format == "JPEG" and color.mode == "RGB" and alpha.format == "PNG" and alpha.mode == "L"
    assert color.size == alpha.size == (96, 64)
    mask = np.asarray(alpha)
    assert mask[32, 48] > 200 and mask[2, 2] < 50  # white = foreground: the disc in the middle
    png = opened(post(client, **upload(format="png")))
    assert np.array_equal(np.asarray(png.getchannel("A")), mask)


def test_channels_alpha_is_the_mask(client):
    mask = opened(post(client, **upload(channels="alpha")))
    assert mask.mode == "L" and mask.size == (96, 64)
    cutout = opened(post(client, **upload()))
    assert np.array_equal(np.asarray(mask), np.asarray(cutout.getchannel("A")))


def test_invalid_format_and_channels(client):
    error(post(client, **upload(format="gif")), 400, "invalid_format")
    error(post(client, **upload(channels="rgb")), 400, "invalid_channels")


# ---------------------------------------------------------------- crop, roi, scale, position

def test_crop_and_crop_margin_in_one_two_and_four_values(client):
    tight = opened(post(client, **upload(crop="true")))
    assert tight.width < 96 and tight.height < 64
    even = opened(post(client, **upload(crop="true", crop_margin="3px")))
    assert even.size == (tight.width + 6, tight.height + 6)
    pairs = opened(post(client, **upload(crop="true", crop_margin="2px 4px")))
    assert pairs.size == (tight.width + 8, tight.height + 4)
    four = opened(post(client, **upload(crop="true", crop_margin="1px 2px 3px 4px")))
    assert four.size == (tight.width + 6, tight.height + 4)
    percent = opened(post(client, **upload(crop="true", crop_margin="10%")))
    assert percent.width == pytest.approx(tight.width * 1.2, abs=2)


def test_crop_margin_without_crop_is_ignored(client):
    """Clients send crop=false with crop_margin=0px on every call."""
    assert opened(post(client, **upload(crop="false", crop_margin="20px"))).size == (96, 64)


def test_invalid_crop_margin(client):
    error(post(client, **upload(crop="true", crop_margin="1px 2px 3px")), 400, "invalid_crop_margin")
    error(post(client, **upload(crop="true", crop_margin="5em")), 400, "invalid_crop_margin")


def test_roi_keeps_only_the_subject_inside(client):
    full = np.asarray(opened(post(client, **upload(channels="alpha"))))
    left = np.asarray(opened(post(client, **upload(channels="alpha", roi="0% 0% 50% 100%"))))
    assert left[:, 48:].max() == 0 and np.array_equal(left[:, :48], full[:, :48])
    pixels = np.asarray(opened(post(client, **upload(channels="alpha", roi="0px 0px 48px 64px"))))
    assert np.array_equal(pixels, left)


def test_roi_px_is_in_the_original_images_pixels(client):
    big = image_bytes(photo((192, 128)), "PNG")
    small = opened(post(client, image_file=(io.BytesIO(big), "b.png"), channels="alpha", roi="0 0 96px 128px",
                        size="preview"))
    half = np.asarray(small)
    assert half[:, half.shape[1] // 2 + 1:].max() == 0 and half[:, : half.shape[1] // 2].max() > 200


def test_invalid_roi(client):
    error(post(client, **upload(roi="0 0 100%")), 400, "invalid_roi")
    error(post(client, **upload(roi="50% 0 10% 100%")), 400, "invalid_roi")


def test_scale_and_position(client):
    plain = post(client, **upload())
    width = int(plain.headers["X-Foreground-Width"])
    scaled = post(client, **upload(scale="50%"))
    assert opened(scaled).size == (96, 64)
    assert int(scaled.headers["X-Foreground-Height"]) == pytest.approx(32, abs=2)  # half the canvas's height
    left, top = int(scaled.headers["X-Foreground-Left"]), int(scaled.headers["X-Foreground-Top"])
    assert left + int(scaled.headers["X-Foreground-Width"]) / 2 == pytest.approx(48, abs=2)  # scale implies center
    assert top + int(scaled.headers["X-Foreground-Height"]) / 2 == pytest.approx(32, abs=2)
    corner = post(client, **upload(position="0% 0%"))
    assert corner.headers["X-Foreground-Left"] == "0" and corner.headers["X-Foreground-Top"] == "0"
    assert int(corner.headers["X-Foreground-Width"]) == width  # unscaled: only moved
    right = post(client, **upload(scale="30%", position="100%"))
    assert int(right.headers["X-Foreground-Left"]) + int(right.headers["X-Foreground-Width"]) == 96
    error(post(client, **upload(scale="5%")), 400, "invalid_scale")
    error(post(client, **upload(position="left")), 400, "invalid_position")


# ---------------------------------------------------------------- backgrounds and transparency

@pytest.mark.parametrize("color, rgb", [("81d4fa", (0x81, 0xD4, 0xFA)), ("fff", (255, 255, 255)),
                                        ("#ff0000", (255, 0, 0)), ("green", (0, 128, 0))])
def test_bg_color(client, color, rgb):
    image = opened(post(client, **upload(bg_color=color, format="png")))
    assert image.convert("RGB").getpixel((0, 0)) == rgb


def test_bg_color_with_alpha_stays_translucent(client):
    for color in ("f008", "ff000080"):
        image = opened(post(client, **upload(bg_color=color)))
        assert image.format == "PNG" and image.getpixel((0, 0))[3] in (0x88, 0x80)


def test_invalid_bg_color(client):
    error(post(client, **upload(bg_color="notacolour")), 400, "invalid_bg_color")


def test_bg_image_file_and_url(open_client, images):
    red = (255, 0, 0)
    from_file = opened(post(open_client, **upload(
        bg_image_file=(io.BytesIO(image_bytes(Image.new("RGB", (30, 30), "red"), "PNG")), "bg"))))
    assert from_file.mode == "RGB" and from_file.getpixel((0, 0)) == pytest.approx(red, abs=3)
    from_url = opened(post(open_client, **upload(bg_image_url=f"{images}/bg.png")))
    assert from_url.getpixel((0, 0)) == pytest.approx(red, abs=3)
    error(post(open_client, **upload(bg_image_url=f"{images}/none.png")), 400, "failed_image_download")
    error(post(open_client, **upload(bg_color="red", bg_image_url=f"{images}/bg.png")), 400, "multiple_backgrounds")


def test_semitransparency_false_leaves_no_partial_alpha(client):
    soft = np.asarray(opened(post(client, **upload(channels="alpha"))))
    hard = np.asarray(opened(post(client, **upload(channels="alpha", semitransparency="false"))))
    assert ((soft > 0) & (soft < 255)).any()
    assert set(np.unique(hard)) <= {0, 255}
    assert opened(post(client, json={"image_file_b64": B64, "semitransparency": False})).mode == "RGBA"


# ---------------------------------------------------------------- fields served only when they ask for nothing

def test_type_type_level_and_add_shadow(client):
    ok = post(client, **upload(type="auto", type_level="1", add_shadow="false"))
    assert ok.status_code == 200 and ok.headers["X-Type"] == "other"
    assert "X-Type" not in post(client, **upload(type_level="none")).headers
    error(post(client, **upload(type="person")), 400, "unsupported_type")
    error(post(client, **upload(type="spaceship")), 400, "invalid_type")
    for level in ("2", "latest"):
        error(post(client, **upload(type_level=level)), 400, "unsupported_type_level")
    error(post(client, **upload(add_shadow="true")), 400, "unsupported_add_shadow")
    error(post(client, json={"image_file_b64": B64, "add_shadow": True}), 400, "unsupported_add_shadow")


# ---------------------------------------------------------------- responses

def test_headers_on_the_image(client):
    response = post(client, **upload(crop="true"))
    image = opened(response)
    assert int(response.headers["X-Credits-Charged"]) == 0
    assert (int(response.headers["X-Width"]), int(response.headers["X-Height"])) == image.size
    assert response.headers["X-Type"] == "other"
    assert response.headers["X-Foreground-Left"] == response.headers["X-Foreground-Top"] == "0"
    assert int(response.headers["X-Foreground-Width"]) == image.width


def test_accept_json_answers_result_b64_and_the_foreground(client):
    response = post(client, accept="application/json", **upload())
    assert response.status_code == 200 and response.mimetype == "application/json"
    data = response.get_json()["data"]
    assert set(data) == {"result_b64", "foreground_top", "foreground_left", "foreground_width", "foreground_height"}
    image = Image.open(io.BytesIO(base64.b64decode(data["result_b64"])))
    assert image.format == "PNG" and image.size == (96, 64)
    box = image.getchannel("A").point(lambda value: 255 if value > 10 else 0).getbbox()
    assert (data["foreground_left"], data["foreground_top"]) == box[:2]
    assert (data["foreground_width"], data["foreground_height"]) == (box[2] - box[0], box[3] - box[1])
    assert response.headers["X-Foreground-Width"] == str(data["foreground_width"])
    assert int(response.headers["X-Credits-Charged"]) == 0
    zipped = post(client, accept="application/json, text/plain, */*", json={"image_file_b64": B64, "format": "zip"})
    assert zipfile.ZipFile(io.BytesIO(base64.b64decode(zipped.get_json()["data"]["result_b64"]))).namelist()


def test_any_accept_gets_the_bytes(client):
    for accept in ("*/*", "image/*", None):
        assert opened(post(client, accept=accept, **upload())).format == "PNG"


def test_no_foreground_is_unknown_foreground(client):
    error(post(client, **upload(roi="0 0 2px 2px")), 400, "unknown_foreground")


# ---------------------------------------------------------------- keys, limits, busy

def test_any_key_is_accepted_without_api_key(client):
    assert post(client, **upload()).status_code == 200
    assert client.post("/v1.0/removebg", data=upload(), headers={"X-Api-Key": "anything"}).status_code == 200


def test_key_is_403_when_api_key_is_set(make_app):
    client = make_app(API_KEY="secret").test_client()
    assert error(post(client, **upload()), 403, "auth_failed")["title"] == "Missing API Key"
    wrong = client.post("/v1.0/removebg", data=upload(), headers={"X-Api-Key": "guess"})
    assert error(wrong, 403, "auth_failed")["title"] == "Invalid API Key"
    error(client.get("/v1.0/account"), 403, "auth_failed")
    assert client.post("/v1.0/removebg", data=upload(), headers={"x-api-key": "secret"}).status_code == 200
    assert client.get("/v1.0/account", headers={"X-API-Key": "secret"}).status_code == 200


def test_file_too_large(make_app, tmp_path):
    client = make_app(MAX_FILE_SIZE_MB="1").test_client()
    noise = np.random.default_rng(1).integers(0, 255, (620, 620, 3), dtype=np.uint8)
    big = image_bytes(Image.fromarray(noise), "PNG")
    assert 1024 * 1024 < len(big) < 1.3 * 1024 * 1024
    error(post(client, image_file=(io.BytesIO(big), "big.png")), 400, "file_too_large")
    error(post(client, image_file_b64=base64.b64encode(big).decode()), 400, "file_too_large")
    error(client.post("/v1.0/removebg", data=upload(image_url="x" * 3_000_000)), 400, "file_too_large")
    assert not list((tmp_path / "uploads").iterdir())


def test_resolution_too_high(make_app):
    client = make_app(MAX_PIXELS="1000000").test_client()
    wide = image_bytes(Image.new("RGB", (1200, 1000)), "PNG")
    assert "pixels" in error(post(client, image_file=(io.BytesIO(wide), "w.png")), 400, "resolution_too_high")["detail"]


def test_busy_is_429_with_retry_after(make_app):
    app = make_app(MAX_QUEUE="0")
    client = app.test_client()
    assert post(client, **upload()).status_code == 200  # the model is loaded
    with app.extensions["isnet_tiny"].slot():
        response = post(client, **upload())
    error(response, 429, "rate_limit_exceeded")
    assert int(response.headers["Retry-After"]) > 0


# ---------------------------------------------------------------- account

def test_account(client):
    response = client.get("/v1.0/account")
    assert response.status_code == 200
    attributes = response.get_json()["data"]["attributes"]
    assert set(attributes["credits"]) == {"total", "subscription", "payg", "enterprise"}
    assert isinstance(attributes["credits"]["total"], float)
    assert attributes["api"] == {"free_calls": 0, "sizes": "all"}
