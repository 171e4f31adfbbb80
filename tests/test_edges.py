"""The edge stage in the one pipeline: every endpoint, format and front end returns what app.matting's refine
and decontaminate made when they run, and the refine / decontaminate options (and their CLI flags) switch each
on or off (both are on by default).

The two functions are replaced by markers (refine: alpha 200 everywhere; decontaminate: colour (10, 20, 30)
everywhere), so each check sees in the answer itself whether the stage ran; a 32 px model does the rest.
"""
from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from app import create_app, imaging, matting
from app.services.isnet_tiny_service import IsnetTinyService
from tests.conftest import image_bytes, photo, tiny_onnx, upload

PHOTO = image_bytes(photo((96, 64)), "PNG")
ALPHA = 200
COLOUR = (10, 20, 30)


@pytest.fixture(scope="module")
def shared_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flask]:
    """One app for the whole module, on a 32 px model: these tests are about where the stage runs, not masks."""
    home = tmp_path_factory.mktemp("edges")
    env = {"FLASK_ENV": "testing", "QUEUE_TIMEOUT_S": "20", "MODEL_PATH": str(tiny_onnx(home / "tiny.onnx"))}
    for name, var in (("models", "MODEL_DIR"), ("uploads", "UPLOAD_FOLDER"), ("processed", "PROCESSED_FOLDER")):
        (home / name).mkdir()
        env[var] = str(home / name)
    IsnetTinyService._instance = None
    yield create_app(env)
    IsnetTinyService._instance = None


@pytest.fixture
def client(shared_app: Flask) -> FlaskClient:
    return shared_app.test_client()


@pytest.fixture
def stages(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Which edge stages ran, in order, with markers in place of the real estimates."""
    ran: list[str] = []

    def refine(rgb: Image.Image, mask: Image.Image) -> Image.Image:
        assert rgb.size == mask.size and mask.mode == "L"
        ran.append("refine")
        return Image.new("L", mask.size, ALPHA)

    def decontaminate(rgb: Image.Image, alpha: Image.Image) -> Image.Image:
        assert rgb.size == alpha.size and rgb.mode == "RGB"
        ran.append("decontaminate")
        return Image.new("RGB", rgb.size, COLOUR)

    monkeypatch.setattr(matting, "refine", refine)
    monkeypatch.setattr(matting, "decontaminate", decontaminate)
    return ran


def opened(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def assert_marked(image: Image.Image, refined: bool, cleaned: bool) -> None:
    """An RGBA cutout: alpha is the refine marker (or the model's mask), colours the decontaminate marker."""
    rgba = np.asarray(image.convert("RGBA")).reshape(-1, 4)
    assert (np.all(rgba[:, 3] == ALPHA)) == refined
    visible = rgba[rgba[:, 3] > 0, :3]
    assert visible.size and np.all(np.abs(visible.astype(int) - COLOUR) <= 2) == cleaned


@pytest.mark.parametrize("fmt", ["png", "webp", "auto"])
def test_remove_cutouts_carry_both_in_every_transparent_format(client, stages, fmt):
    response = client.post("/api/bg/remove", data=upload(PHOTO, "pic.png", format=fmt))
    assert response.status_code == 200
    assert_marked(opened(response.data), refined=True, cleaned=True)
    assert stages == ["refine", "decontaminate"]


def test_jpeg_flattens_the_cleaned_colours(client, stages):
    response = client.post("/api/bg/remove", data=upload(PHOTO, "pic.png", format="jpeg"))
    pixels = np.asarray(opened(response.data)).reshape(-1, 3).astype(int)
    expected = (np.array(COLOUR) * ALPHA + 255 * (255 - ALPHA)) / 255  # the marker over white
    assert np.abs(pixels - expected).max() <= 3
    assert stages == ["refine", "decontaminate"]


def test_zip_holds_the_cleaned_colours_and_the_refined_alpha(client, stages):
    response = client.post("/api/bg/remove", data=upload(PHOTO, "pic.png", format="zip"))
    with zipfile.ZipFile(io.BytesIO(response.data)) as archive:
        colour = np.asarray(opened(archive.read("color.jpg"))).reshape(-1, 3).astype(int)
        alpha = np.asarray(opened(archive.read("alpha.png")))
    assert np.abs(colour - COLOUR).max() <= 3 and np.all(alpha == ALPHA)


def test_crop_and_semitransparency_work_on_the_refined_alpha(client, stages):
    response = client.post("/api/bg/remove", data=upload(PHOTO, "pic.png", crop="true", semitransparency="false"))
    image = opened(response.data)
    assert image.size == (96, 64)  # alpha 200 everywhere: the subject's box is the whole image
    assert np.all(np.asarray(image.getchannel("A")) == 255)  # 200 >= 128 becomes opaque
    assert stages == ["refine", "decontaminate"]


def test_the_mask_alone_is_refined_and_has_no_colours_to_clean(client, stages):
    response = client.post("/api/bg/remove", data=upload(PHOTO, "pic.png", only_mask="true"))
    assert np.all(np.asarray(opened(response.data)) == ALPHA)
    assert stages == ["refine"]


@pytest.mark.parametrize("fields", [{"color": "#00ff00"}, {"color": "#00ff0080", "format": "png"}])
def test_change_color_composes_the_cleaned_colours(client, stages, fields):
    response = client.post("/api/bg/change_color", data=upload(PHOTO, "pic.png", **fields))
    assert response.status_code == 200
    rgb = np.asarray(opened(response.data).convert("RGB")).reshape(-1, 3).astype(int)
    assert np.abs(rgb[:, 0] - COLOUR[0] * ALPHA / 255).max() <= 3  # red comes from the marker alone
    assert stages == ["refine", "decontaminate"]


def test_change_color_over_a_background_image(client, stages):
    backdrop = image_bytes(Image.new("RGB", (40, 30), (0, 0, 255)), "PNG")
    data = {**upload(PHOTO, "pic.png", format="png"), "bg_image": (io.BytesIO(backdrop), "bg.png")}
    rgb = np.asarray(opened(client.post("/api/bg/change_color", data=data).data).convert("RGB")).astype(int)
    assert np.abs(rgb[..., 1] - COLOUR[1] * ALPHA / 255).max() <= 3  # green from the marker, none from the blue
    assert stages == ["refine", "decontaminate"]


@pytest.mark.parametrize("fields, expected", [
    ({}, ["refine", "decontaminate"]),  # the defaults: both on
    ({"refine": "true"}, ["refine", "decontaminate"]),
    ({"refine": "false"}, ["decontaminate"]),
    ({"refine": "1", "decontaminate": "false"}, ["refine"]),
    ({"refine": "0", "decontaminate": "off"}, []),
    ({"refine": "", "decontaminate": ""}, ["refine", "decontaminate"]),  # blank means not sent
])
def test_the_options_switch_each_stage_on_and_off(client, stages, fields, expected):
    response = client.post("/api/bg/remove", data=upload(PHOTO, "pic.png", **fields))
    assert response.status_code == 200
    assert stages == expected
    assert_marked(opened(response.data), refined="refine" in expected, cleaned="decontaminate" in expected)


def test_the_options_in_a_json_body_and_on_change_color(client, stages):
    import base64

    response = client.post("/api/bg/remove", json={"image_file_b64": base64.b64encode(PHOTO).decode(),
                                                   "refine": False, "decontaminate": False})
    assert response.status_code == 200 and stages == []
    client.post("/api/bg/change_color", data=upload(PHOTO, "pic.png", refine="false"))
    assert stages == ["decontaminate"]


def test_a_bad_value_is_a_400_naming_the_option(client, stages):
    response = client.post("/api/bg/remove", data=upload(PHOTO, "pic.png", refine="maybe"))
    assert response.status_code == 400 and "refine must be true or false" in response.get_json()["error"]
    assert stages == []


def test_removebg_endpoint_uses_both_and_takes_the_options(client, stages):
    fields = {"image_file": (io.BytesIO(PHOTO), "photo.png"), "size": "full"}
    assert_marked(opened(client.post("/v1.0/removebg", data=fields).data), refined=True, cleaned=True)
    assert stages == ["refine", "decontaminate"]
    stages.clear()
    fields = {"image_file": (io.BytesIO(PHOTO), "photo.png"), "channels": "alpha"}
    assert np.all(np.asarray(opened(client.post("/v1.0/removebg", data=fields).data)) == ALPHA)
    assert stages == ["refine"]
    stages.clear()
    fields = {"image_file": (io.BytesIO(PHOTO), "photo.png"), "refine": "false", "decontaminate": "false"}
    assert client.post("/v1.0/removebg", data=fields).status_code == 200 and stages == []


def test_batch_cli_uses_both_by_default_and_its_flags_switch_them_off(shared_app, stages, tmp_path: Path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "one.png").write_bytes(PHOTO)
    runner = shared_app.test_cli_runner()
    result = runner.invoke(args=["remove", str(tmp_path / "in"), "--out", str(tmp_path / "on")])
    assert result.exit_code == 0, result.output
    assert_marked(Image.open(tmp_path / "on" / "nobg_one.png"), refined=True, cleaned=True)
    assert stages == ["refine", "decontaminate"]
    stages.clear()
    result = runner.invoke(args=["remove", str(tmp_path / "in"), "--out", str(tmp_path / "off"), "--no-refine",
                                 "--no-decontaminate"])
    assert result.exit_code == 0, result.output
    assert_marked(Image.open(tmp_path / "off" / "nobg_one.png"), refined=False, cleaned=False)
    assert stages == []


def test_the_real_stages_change_a_soft_edge_and_keep_the_interior(client):
    """Without markers, with the defaults: a soft-edged subject comes back with a better alpha in the band only."""
    size = 160
    yy, xx = np.mgrid[0:size, 0:size]
    alpha = np.clip((size * 0.3 - np.hypot(yy - size / 2, xx - size / 2)) / 8 + 0.5, 0, 1)[..., None]
    rgb = alpha * np.array([250, 40, 250]) + (1 - alpha) * np.array([0, 200, 0])  # the background darkest: mask 0
    data = image_bytes(Image.fromarray((rgb + 0.5).astype(np.uint8)), "PNG")
    on = np.asarray(opened(client.post("/api/bg/remove", data=upload(data, "disc.png")).data)).astype(int)
    off = np.asarray(opened(client.post("/api/bg/remove", data=upload(data, "disc.png", refine="false",
                                                                        decontaminate="false")).data)).astype(int)
    rim = (alpha[..., 0] > 0) & (alpha[..., 0] < 1)
    error_on, error_off = (np.abs(a[..., 3][rim] / 255 - alpha[..., 0][rim]).mean() for a in (on, off))
    assert error_on < 0.9 * error_off  # the band's alpha moved towards the truth
    centre = slice(size // 2 - 10, size // 2 + 10)
    assert np.array_equal(on[centre, centre], off[centre, centre])
    soft = (on[..., 3] > 20) & (on[..., 3] < 235)
    assert on[soft][:, 1].mean() < off[soft][:, 1].mean() - 20  # less of the green background in the rim


@pytest.mark.parametrize("path, fields", [
    ("/api/bg/remove", {}), ("/api/bg/remove", {"format": "zip"}), ("/api/bg/remove", {"only_mask": "true"}),
    ("/api/bg/change_color", {"color": "#00ff00"}), ("/api/bg/change_color", {"format": "webp"}),
])
def test_the_output_is_composed_and_encoded_inside_the_inference_slot(shared_app, client, monkeypatch, path, fields):
    """A 12 MP cutout's RGBA copy and PNG (~110 MB) must not overlap the next request's decode and inference."""
    service = shared_app.extensions["isnet_tiny"]
    outside: list[str] = []

    def watched(name: str, function):
        def call(*args, **kwargs):
            if threading.get_ident() not in service._holders:
                outside.append(name)
            return function(*args, **kwargs)
        return call

    for name in ("cutout", "over_background", "cover", "encode"):
        monkeypatch.setattr(imaging, name, watched(name, getattr(imaging, name)))
    response = client.post(path, data=upload(PHOTO, "pic.png", **fields))
    assert response.status_code == 200
    assert outside == []
