"""Every endpoint and error path through Flask's test client.

Requests run on the 64 px disc model (the disc_model mark), which finds photo()'s disc in
milliseconds; the tests of the default model, its status and its files unset MODEL_PATH and so run the
bundled u2netp.
"""
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import image_bytes, photo, upload, wait_for_state

pytestmark = pytest.mark.disc_model

BUNDLED = {"MODEL_PATH": ""}  # the default model, as a fresh checkout serves it


def assert_json_error(response, status: int) -> str:
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error", "request_id"} and body["error"]
    assert body["request_id"] == response.headers["X-Request-ID"]
    assert "Traceback" not in body["error"] and "/work" not in body["error"]
    return body["error"]


def test_remove_returns_rgba_png_with_download_name(client):
    response = client.post("/api/bg/remove", data=upload(image_bytes(photo((64, 48)), "JPEG"), "holiday.jpg"))
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    assert 'filename=nobg_holiday.png' in response.headers["Content-Disposition"]
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    result = Image.open(io.BytesIO(response.data))
    assert result.format == "PNG" and result.mode == "RGBA" and result.size == (64, 48)
    alpha = np.asarray(result.getchannel("A"))
    assert alpha.min() < 64 and alpha.max() > 192, "the mask should separate the disc from the background"


def test_change_color_returns_jpeg_on_the_colour(client):
    response = client.post(
        "/api/bg/change_color", data=upload(image_bytes(photo((64, 48)), "PNG"), "x.png", color="#00FF00")
    )
    assert response.status_code == 200 and response.mimetype == "image/jpeg"
    assert "filename=colored_x.jpg" in response.headers["Content-Disposition"]
    result = Image.open(io.BytesIO(response.data))
    assert result.format == "JPEG" and result.size == (64, 48)
    red, green, blue = result.getpixel((1, 1))
    assert green > 200 and red < 80 and blue < 80


@pytest.mark.parametrize("color", ["255,0,0", "#f00", None])
def test_change_color_forms(client, color):
    fields = {"color": color} if color else {}
    response = client.post("/api/bg/change_color", data=upload(image_bytes(photo(), "PNG"), **fields))
    assert response.status_code == 200
    red, green, blue = Image.open(io.BytesIO(response.data)).getpixel((1, 1))
    assert red > 200 and (color is None) == (green > 200)


def test_bad_colour_is_400_naming_the_forms(client):
    message = assert_json_error(
        client.post("/api/bg/change_color", data=upload(image_bytes(photo(), "PNG"), color="blurple")), 400
    )
    assert "#RRGGBB" in message and "R,G,B" in message


def test_no_file_field_is_400(client):
    assert "file" in assert_json_error(client.post("/api/bg/remove", data={}), 400)
    assert_json_error(client.post("/api/bg/remove", data={"other": "x"}), 400)


def test_empty_filename_is_400(client):
    assert_json_error(client.post("/api/bg/remove", data={"file": (io.BytesIO(b"abc"), "")}), 400)


def test_empty_upload_is_400(client):
    assert "empty" in assert_json_error(client.post("/api/bg/remove", data=upload(b"", "a.png")), 400)


def test_wrong_extension_is_415(client):
    assert_json_error(client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG"), "a.txt")), 415)


def test_text_named_as_image_is_415(client):
    assert_json_error(client.post("/api/bg/remove", data=upload(b"just some text\n" * 20, "a.jpg")), 415)


def test_truncated_image_is_422(client):
    data = image_bytes(photo((300, 300)), "PNG")
    assert_json_error(client.post("/api/bg/change_color", data=upload(data[: len(data) // 2], "a.png")), 422)


def test_oversized_upload_is_413(make_app):
    client = make_app(MAX_FILE_SIZE_MB="1").test_client()
    big = b"\xff\xd8" + b"\0" * (1024 * 1024 + 200 * 1024)
    assert "1 MB" in assert_json_error(client.post("/api/bg/remove", data=upload(big, "big.jpg")), 413)


def test_pixel_bomb_is_413(client):
    from tests.test_imaging import png_header_only

    assert_json_error(client.post("/api/bg/remove", data=upload(png_header_only(60000, 60000), "bomb.png")), 413)


def test_wrong_method_and_unknown_path_are_json(client):
    assert_json_error(client.get("/api/bg/remove"), 405)
    assert_json_error(client.get("/api/bg/nothing"), 404)


@pytest.mark.parametrize("name", ['../../etc/pa"ss;x=1.png', "C:\\Users\\me\\photo.png", "\u00e9t\u00e9 \u2600.png", "....png"])
def test_download_name_is_sanitised(client, name):
    response = client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG"), name))
    assert response.status_code == 200
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment; filename=nobg_") and disposition.endswith(".png")
    for bad in ("/", "\\", '"', ";x=", "\r", "\n", ".."):
        assert bad not in disposition.split("filename=", 1)[1][:-4], disposition


def test_health_and_status_before_and_after_first_request(make_app):
    client = make_app(**BUNDLED).test_client()
    health = client.get("/api/bg/health").get_json()
    assert health["status"] == "healthy" and health["model_loaded"] is False and health["memory_mb"] > 0
    status = client.get("/api/bg/status").get_json()
    assert status["model"] == "u2netp" and status["model_info"]["state"] == "not_loaded"
    assert status["max_file_size_mb"] == 8 and status["max_dimension"] == 1024
    assert set(status["allowed_extensions"]) >= {"png", "jpg", "jpeg", "gif", "bmp", "tiff", "webp"}
    client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG")))
    status = client.get("/api/bg/status").get_json()
    assert status["model_info"]["state"] == "ready" and status["model_info"]["source"] == "bundled"
    assert status["memory"]["model_loaded"] is True and status["memory"]["rss_mb"] > 0
    assert status["inference"] == {**status["inference"], "count": 1, "threads": 1, "arena": False}
    assert client.get("/api/bg/health").get_json()["model_loaded"] is True


def test_clear_cache_unloads_and_next_request_reloads(client):
    client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG")))
    cleared = client.post("/api/bg/clear_cache").get_json()
    assert cleared["status"] == "cleared" and cleared["freed_mb"] >= 0 and cleared["memory"]["model_loaded"] is False
    assert client.get("/api/bg/status").get_json()["model_info"]["state"] == "not_loaded"
    assert client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG"))).status_code == 200


def test_unreachable_model_is_503_with_reason_and_health_says_so(make_app):
    from tests.test_model_store import closed_port

    client = make_app(**BUNDLED, BG_MODEL="isnet-general-use",
                      MODEL_BASE_URL=f"http://127.0.0.1:{closed_port()}/").test_client()
    response = client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG")))
    message = assert_json_error(response, 503)
    assert "isnet-general-use" in message and response.headers["Retry-After"]
    info = wait_for_state(client, {"failed"})
    assert "isnet-general-use" in info["reason"]
    assert client.get("/api/bg/health").status_code == 503


def test_corrupt_model_file_is_503(make_app, tmp_path: Path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a model")
    client = make_app(MODEL_PATH=str(bad)).test_client()
    message = assert_json_error(client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG"))), 503)
    assert "cannot load" in message and "bad.onnx" in message and str(tmp_path) not in message


def test_corrupt_model_in_model_dir_fails_its_hash(make_app, env):
    Path(env["MODEL_DIR"], "u2netp.onnx").write_bytes(b"corrupted")
    client = make_app(**BUNDLED, BG_MODEL="u2netp").test_client()
    assert "sha256" in assert_json_error(client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG"))), 503)


def test_no_files_left_behind(client, env):
    noise = np.random.default_rng(0).integers(0, 255, (600, 600, 3), dtype=np.uint8)
    big = image_bytes(Image.fromarray(noise), "PNG")
    assert len(big) > 500 * 1024, "large enough to be spooled to UPLOAD_FOLDER rather than kept in memory"
    for data in (big, b"", b"text" * 300, big[:1000]):
        client.post("/api/bg/remove", data=upload(data, "a.png"))
    assert list(Path(env["UPLOAD_FOLDER"]).iterdir()) == []
    assert list(Path(env["PROCESSED_FOLDER"]).iterdir()) == []


def test_page_lists_endpoints_with_the_real_host(client):
    page = client.get("/", base_url="http://pixport.example:8080").get_data(as_text=True)
    assert "http://pixport.example:8080/api/bg/remove" in page
    for path in ("/api/bg/remove", "/api/bg/change_color", "/api/bg/health", "/api/bg/status", "/api/bg/clear_cache"):
        assert path in page


def test_api_key_guards_image_endpoints_and_clear_cache(make_app):
    client = make_app(API_KEY="s3cret-key").test_client()
    data = image_bytes(photo(), "PNG")
    for path in ("/api/bg/remove", "/api/bg/change_color", "/api/bg/clear_cache"):
        message = assert_json_error(client.post(path, data=upload(data)), 401)
        assert "API key" in message
        assert_json_error(client.post(path, data=upload(data), headers={"Authorization": "Bearer wrong"}), 401)
    assert client.get("/api/bg/health").status_code == 200
    assert client.get("/api/bg/status").status_code == 200
    ok = client.post("/api/bg/remove", data=upload(data), headers={"Authorization": "Bearer s3cret-key"})
    assert ok.status_code == 200
    assert client.post("/api/bg/clear_cache", headers={"X-API-Key": "s3cret-key"}).status_code == 200
