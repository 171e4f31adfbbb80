"""BG_MODEL=isnet-general-tiny with nothing in MODEL_DIR: built on first use in a child process."""
from __future__ import annotations

import threading
from pathlib import Path

from app.services import model_prepare, model_store
from tests.conftest import image_bytes, photo, upload, wait_for_state
from tests.test_model_build import _save, _tiny_isnet
from tests.test_model_store import closed_port


def test_tiny_is_prepared_lazily_answering_503_meanwhile(make_app, tmp_path: Path, env):
    source = _save(_tiny_isnet(half=True), tmp_path / "isnet-source.fp16.onnx")
    app = make_app(BG_MODEL="isnet-general-tiny", ISNET_SOURCE=str(source))
    client = app.test_client()
    first = client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG")))
    assert first.status_code == 503 and int(first.headers["Retry-After"]) > 0
    assert "preparing" in first.get_json()["error"]
    assert client.get("/api/bg/health").status_code == 200
    info = wait_for_state(client, {"ready", "failed"})
    assert info["state"] == "ready", info
    assert info["source"] == "built" and info["name"] == "isnet-general-tiny"
    built = Path(env["MODEL_DIR"]) / "isnet-general-tiny.onnx"
    assert built.is_file() and model_store.sidecar_of(built).is_file()
    assert client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG"))).status_code == 200
    assert not list(Path(env["MODEL_DIR"]).glob("*.partial")) and not list(Path(env["MODEL_DIR"]).glob("*.tmp*"))


def test_default_rule_picks_the_built_tiny(make_app, tmp_path: Path, env):
    source = _save(_tiny_isnet(half=False), tmp_path / "isnet-source.onnx")
    model_prepare.prepare_model(model_store.TINY, Path(env["MODEL_DIR"]), source)
    app = make_app()
    assert app.test_client().get("/api/bg/status").get_json()["model"] == "isnet-general-tiny"


def test_two_preparers_build_once(tmp_path: Path):
    """Two workers ask at once: the lock makes the second wait and reuse the first's file."""
    source = _save(_tiny_isnet(half=False), tmp_path / "isnet-source.onnx")
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    results: list[model_store.ModelFile] = []
    threads = [
        threading.Thread(target=lambda: results.append(
            model_prepare.prepare_in_child(model_store.TINY, model_dir, source, "http://127.0.0.1:1/")))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(found.source for found in results) == ["built", "model_dir"]


def test_failed_build_is_reported(make_app, tmp_path: Path):
    app = make_app(BG_MODEL="isnet-general-tiny", MODEL_BASE_URL=f"http://127.0.0.1:{closed_port()}/")
    client = app.test_client()
    client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG")))
    info = wait_for_state(client, {"failed"})
    assert "isnet-general-tiny" in info["reason"] and "failed" in info["reason"]
    assert client.get("/api/bg/health").status_code == 503


def test_cli_builds_from_source(make_app, tmp_path: Path, env):
    source = _save(_tiny_isnet(half=True), tmp_path / "isnet-source.fp16.onnx")
    result = make_app().test_cli_runner().invoke(args=["prepare-model", "isnet-general-tiny", "--source", str(source)])
    assert result.exit_code == 0, result.output
    assert "isnet-general-tiny" in result.output and (Path(env["MODEL_DIR"]) / "isnet-general-tiny.onnx").is_file()
