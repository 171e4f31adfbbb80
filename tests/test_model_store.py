"""The model store: bundled u2netp, hash checks, and pooch downloads against a loopback HTTP server."""
from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest

from app.services import model_store
from app.services.model_store import CATALOGUE, ModelSpec, ModelUnavailable
from tests.conftest import LoopbackServer


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serves tmp_path/served on 127.0.0.1 for the duration of a test; yields (base_url, folder)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = lambda *args, **kwargs: _Handler(*args, directory=str(folder), **kwargs)  # noqa: E731
    server = LoopbackServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    server.shutdown()
    server.server_close()


def spec_for(data: bytes, name: str = "toy") -> ModelSpec:
    return ModelSpec(name, f"{name}.onnx", 32, (0.5,) * 3, (1.0,) * 3, hashlib.sha256(data).hexdigest(), True, "test")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_catalogue_has_the_four_models_with_pins():
    assert set(CATALOGUE) == {"isnet-general-tiny", "isnet-general-use", "u2netp", "u2netp-int8"}
    assert CATALOGUE["u2netp"].input_size == 320 and CATALOGUE["isnet-general-use"].input_size == 1024
    assert (CATALOGUE["u2netp-int8"].input_size, CATALOGUE["u2netp-int8"].mean) == (320, CATALOGUE["u2netp"].mean)
    assert CATALOGUE["u2netp-int8"].sha256 is None, "built here: checked against the sidecar the build writes"
    assert CATALOGUE["isnet-general-use"].sha256.startswith("60920e99")
    assert CATALOGUE["u2netp"].sha256.startswith("309c8469")


def test_bundled_u2netp_is_found_without_importing_rembg():
    import sys

    path = model_store.bundled_u2netp()
    assert path is not None and path.name == "u2netp.onnx"
    assert model_store.sha256_of(path) == CATALOGUE["u2netp"].sha256
    assert "rembg" not in sys.modules


def test_default_rule_prefers_tiny_in_model_dir(tmp_path: Path):
    assert model_store.default_model_name(tmp_path) == "u2netp"
    (tmp_path / "u2netp-int8.onnx").write_bytes(b"x")
    assert model_store.default_model_name(tmp_path) == "u2netp-int8"
    (tmp_path / "isnet-general-tiny.onnx").write_bytes(b"x")
    assert model_store.default_model_name(tmp_path) == "isnet-general-tiny"


def test_download_good_hash(file_server, tmp_path: Path):
    base_url, folder = file_server
    data = b"model bytes" * 1000
    (folder / "toy.onnx").write_bytes(data)
    target = tmp_path / "models"
    found = model_store.download(spec_for(data), target, base_url)
    assert found.source == "download" and found.path.read_bytes() == data
    again = model_store.find_local(spec_for(data), target)
    assert again is not None and again.source == "model_dir"


def test_download_bad_hash_leaves_nothing(file_server, tmp_path: Path):
    base_url, folder = file_server
    (folder / "toy.onnx").write_bytes(b"tampered")
    target = tmp_path / "models"
    with pytest.raises(ModelUnavailable, match="sha256"):
        model_store.download(spec_for(b"the real thing"), target, base_url)
    assert not (target / "toy.onnx").exists()


def test_download_missing_file_and_server_down(file_server, tmp_path: Path):
    base_url, _ = file_server
    with pytest.raises(ModelUnavailable, match="failed"):
        model_store.download(spec_for(b"x"), tmp_path, base_url)
    with pytest.raises(ModelUnavailable, match="failed"):
        model_store.download(spec_for(b"x"), tmp_path, f"http://127.0.0.1:{closed_port()}/")
    assert list(tmp_path.glob("toy*")) == []


def test_catalogue_download_of_u2netp_from_a_mirror(file_server, tmp_path: Path):
    base_url, folder = file_server
    (folder / "u2netp.onnx").write_bytes(model_store.bundled_u2netp().read_bytes())
    found = model_store.download(CATALOGUE["u2netp"], tmp_path, base_url)
    assert model_store.sha256_of(found.path) == CATALOGUE["u2netp"].sha256


def test_built_model_is_checked_against_its_sidecar(tmp_path: Path):
    spec = CATALOGUE["isnet-general-tiny"]
    model = tmp_path / spec.filename
    model.write_bytes(b"built")
    with pytest.raises(ModelUnavailable, match="sha256"):
        model_store.find_local(spec, tmp_path)
    model_store.sidecar_of(model).write_text(hashlib.sha256(b"built").hexdigest() + "\n")
    assert model_store.find_local(spec, tmp_path).source == "model_dir"
    model.write_bytes(b"bit rot")
    with pytest.raises(ModelUnavailable, match="failed its sha256"):
        model_store.find_local(spec, tmp_path)


def test_fetch_into_dir_copies_bundled_u2netp(tmp_path: Path):
    found = model_store.fetch_into_dir(CATALOGUE["u2netp"], tmp_path, "http://127.0.0.1:1/")
    assert found.path == tmp_path / "u2netp.onnx" and found.source == "bundled"
    assert model_store.sha256_of(found.path) == CATALOGUE["u2netp"].sha256
    assert model_store.fetch_into_dir(CATALOGUE["u2netp"], tmp_path).source == "model_dir"


def test_lazy_download_through_the_service(file_server, make_app, tmp_path: Path):
    """BG_MODEL names a model not on disk: the first request fetches it from MODEL_BASE_URL."""
    from tests.conftest import image_bytes, photo, upload, wait_for_state

    base_url, folder = file_server
    (folder / "isnet-general-use.onnx").write_bytes(b"not the real isnet")
    client = make_app(BG_MODEL="isnet-general-use", MODEL_BASE_URL=base_url).test_client()
    response = client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG")))
    assert response.status_code == 503 and response.headers["Retry-After"]
    info = wait_for_state(client, {"failed"})
    assert "sha256" in info["reason"]
    again = client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG")))
    assert again.status_code == 503 and "sha256" in again.get_json()["error"]


def test_prepare_model_cli_copies_u2netp(make_app, env):
    runner = make_app().test_cli_runner()
    result = runner.invoke(args=["prepare-model", "u2netp"])
    assert result.exit_code == 0, result.output
    assert Path(env["MODEL_DIR"], "u2netp.onnx").is_file() and "309c8469" in result.output


def test_prepare_model_cli_reports_download_failure(make_app):
    runner = make_app(MODEL_BASE_URL=f"http://127.0.0.1:{closed_port()}/").test_cli_runner()
    result = runner.invoke(args=["prepare-model", "isnet-general-use"])
    assert result.exit_code != 0 and "failed" in result.output
