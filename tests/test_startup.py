"""Start-up as deployed: the eager model load (PRELOAD_MODEL), what /health means, a quiet start log,
and serving without the build-only packages (onnx, protobuf) that the image leaves out."""
from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Callable

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from app.services import isnet_tiny_service, model_prepare, model_store
from app.services.model_store import ModelUnavailable
from tests.conftest import ROOT, free_port, gunicorn, tiny_onnx
from tests.test_deploy import DOCKERFILE, parse_dockerfile


def health_until(client: FlaskClient, status: int, seconds: float = 20) -> dict:
    """Poll /health until it answers `status`; returns the body."""
    deadline = time.monotonic() + seconds
    while True:
        response = client.get("/api/bg/health")
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, response.get_json()
            return response.get_json()
        time.sleep(0.05)


@pytest.fixture
def gated_load(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold every session creation until the returned event is set, to see the service mid-load."""
    gate = threading.Event()
    real = isnet_tiny_service.create_session

    def held(*args: object, **kwargs: object):
        assert gate.wait(20), "the test never released the load"
        return real(*args, **kwargs)

    monkeypatch.setattr(isnet_tiny_service, "create_session", held)
    return gate


def test_preload_starts_at_start_and_health_is_503_until_ready(make_app: Callable[..., Flask], tmp_path: Path,
                                                               gated_load: threading.Event):
    client = make_app(PRELOAD_MODEL="1", MODEL_PATH=str(tiny_onnx(tmp_path / "m.onnx"))).test_client()
    loading = client.get("/api/bg/health")
    assert loading.status_code == 503 and loading.headers["Retry-After"] == "5"
    body = loading.get_json()
    assert (body["status"], body["model_state"], body["model_loaded"]) == ("starting", "loading", False)
    assert "error" not in body
    gated_load.set()  # no request was made: the load was started by create_app
    ready = health_until(client, 200)
    assert (ready["status"], ready["model_state"], ready["model_loaded"]) == ("healthy", "ready", True)


def test_preload_failure_is_503_with_the_reason_and_is_retried(make_app: Callable[..., Flask], tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch):
    broken = tmp_path / "m.onnx"
    broken.write_bytes(b"this is not an onnx model")
    client = make_app(PRELOAD_MODEL="1", MODEL_PATH=str(broken)).test_client()
    failed = health_until(client, 503)
    deadline = time.monotonic() + 20
    while failed["model_state"] != "failed" and time.monotonic() < deadline:
        failed = client.get("/api/bg/health").get_json()
    assert failed["status"] == "unhealthy" and failed["model_state"] == "failed"
    assert "cannot load the model file" in failed["error"] and str(tmp_path) not in failed["error"]
    assert client.get("/api/bg/health").headers["Retry-After"] == "30"

    tiny_onnx(broken)  # the file is fixed; the next probe after the back-off loads it
    monkeypatch.setattr(isnet_tiny_service, "RETRY_FAILED_AFTER_S", 0.0)
    assert health_until(client, 200)["model_state"] == "ready"


def test_preload_reloads_after_clear_cache(make_app: Callable[..., Flask], tmp_path: Path):
    client = make_app(PRELOAD_MODEL="1", MODEL_PATH=str(tiny_onnx(tmp_path / "m.onnx"))).test_client()
    health_until(client, 200)
    assert client.post("/api/bg/clear_cache").status_code == 200
    assert health_until(client, 200)["model_loaded"] is True


def test_without_preload_the_model_waits_for_the_first_request(make_app: Callable[..., Flask], tmp_path: Path):
    client = make_app(MODEL_PATH=str(tiny_onnx(tmp_path / "m.onnx"))).test_client()
    for _ in range(3):
        body = client.get("/api/bg/health").get_json()
        assert body["status"] == "healthy" and body["model_state"] == "not_loaded"
        time.sleep(0.1)
    assert client.get("/api/bg/status").get_json()["model_info"]["state"] == "not_loaded"


def test_a_model_that_needs_onnx_to_build_fails_with_the_command(make_app: Callable[..., Flask],
                                                                 monkeypatch: pytest.MonkeyPatch):
    """The image has no onnx: asking it for an isnet-general-tiny it does not hold must say what to do."""
    real_find_spec = model_prepare.importlib.util.find_spec
    monkeypatch.setattr(model_prepare.importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real_find_spec(name, *a))
    client = make_app(PRELOAD_MODEL="1", BG_MODEL="isnet-general-tiny").test_client()
    body = health_until(client, 503)
    deadline = time.monotonic() + 20
    while body["model_state"] != "failed" and time.monotonic() < deadline:
        body = client.get("/api/bg/health").get_json()
    assert body["model_state"] == "failed"
    assert "onnx is not installed" in body["error"] and "BG_MODEL_BUILD=isnet-general-tiny" in body["error"]
    assert "requirements-build.txt" in body["error"]




def test_download_failure_names_isnet_source(tmp_path: Path):
    closed = f"http://127.0.0.1:{free_port()}/"
    with pytest.raises(ModelUnavailable) as failure:
        model_prepare.prepare_model(model_store.TINY, tmp_path, None, closed)
    assert "ISNET_SOURCE" in str(failure.value) and "--build-arg ISNET_SOURCE=model-src/" in str(failure.value)


SERVE_WITHOUT_BUILD_PACKAGES = textwrap.dedent("""
    import io, sys, time
    for name in ("onnx", "google.protobuf"):
        sys.modules[name] = None  # what the image's runtime lacks: importing either now fails
    from PIL import Image
    from app import create_app
    client = create_app({"FLASK_ENV": "testing", "PRELOAD_MODEL": "1", "MODEL_DIR": sys.argv[1],
                         "UPLOAD_FOLDER": sys.argv[1], "PROCESSED_FOLDER": sys.argv[1]}).test_client()
    deadline = time.monotonic() + 60
    while client.get("/api/bg/health").status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    photo = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photo, "PNG")
    response = client.post("/api/bg/remove", data={"file": (io.BytesIO(photo.getvalue()), "p.png")})
    print(client.get("/api/bg/health").get_json()["model"], response.status_code, response.mimetype)
""")


def test_serving_needs_neither_onnx_nor_protobuf(tmp_path: Path):
    if model_store.bundled_u2netp() is None:
        pytest.skip("the bundled u2netp (requirements-models.txt) is not installed")
    done = subprocess.run([sys.executable, "-c", SERVE_WITHOUT_BUILD_PACKAGES, str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["u2netp", "200", "image/png"]


def runtime_env() -> dict[str, str]:
    """The Dockerfile runtime stage's ENV, as a dict."""
    _, stages = parse_dockerfile(DOCKERFILE.read_text())
    env: dict[str, str] = {}
    for instruction in stages[-1].all("ENV"):
        for word in instruction.args.split():
            key, _, value = word.partition("=")
            env[key] = value
    return env


def test_gunicorn_starts_quietly_with_the_image_settings(tmp_path: Path):
    """gunicorn.conf.py + the image's ENV, with an unwritable $HOME like the image user's: the first
    health 200 comes with the model ready, and the log has no ERROR, traceback or onnxruntime warning."""
    image_env = runtime_env()
    settings = {key: image_env[key] for key in ("PRELOAD_MODEL", "ORT_DISABLE_TELEMETRY", "MALLOC_ARENA_MAX",
                                                "PYTHONUNBUFFERED", "FLASK_ENV")}
    with gunicorn(tmp_path, HOME="/proc/nonexistent", XDG_RUNTIME_DIR=None, XDG_CACHE_HOME=None,
                  **settings) as (base, process, log):
        first: requests.Response | None = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                response = requests.get(f"{base}/api/bg/health", timeout=5)
            except requests.RequestException:
                time.sleep(0.1)
                continue
            assert response.status_code in (200, 503), response.text
            if response.status_code == 200:
                first = response
                break
            time.sleep(0.1)
        assert first is not None, log.read_text()[-2000:]
        assert first.json()["model_state"] == "ready" and first.json()["model_loaded"] is True
    text = log.read_text()
    assert "Booting worker" in text
    bad = [line for line in text.splitlines() if "ERROR" in line or "Traceback" in line or ":onnxruntime:" in line]
    assert bad == [], text[-2000:]
