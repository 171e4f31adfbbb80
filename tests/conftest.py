"""Shared fixtures: an app on a throw-away MODEL_DIR, images made in memory, tiny ONNX graphs."""
from __future__ import annotations

import http.server
import io
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from onnx import TensorProto, helper
from PIL import Image
from werkzeug.serving import make_server

from app import create_app
from app.services.isnet_tiny_service import IsnetTinyService

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "disc_model: the module's apps run on disc_onnx instead of the bundled u2netp")


@pytest.fixture
def env(tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, str]:
    """An environment for create_app whose folders are all inside tmp_path.

    Tests marked disc_model get MODEL_PATH set to disc_onnx: tests of HTTP, formats and plumbing need a
    subject with a known box, not u2netp's seconds of inference per request on a busy machine.
    """
    for name in ("models", "uploads", "processed"):
        (tmp_path / name).mkdir()
    settings = {
        "FLASK_ENV": "testing",
        "MODEL_DIR": str(tmp_path / "models"),
        "UPLOAD_FOLDER": str(tmp_path / "uploads"),
        "PROCESSED_FOLDER": str(tmp_path / "processed"),
        "QUEUE_TIMEOUT_S": "20",
    }
    if request.node.get_closest_marker("disc_model"):
        settings["MODEL_PATH"] = str(disc_onnx(tmp_path / "disc.onnx"))
    return settings


@pytest.fixture
def make_app(env: dict[str, str]) -> Iterator[Callable[..., Flask]]:
    """create_app with the test environment plus overrides; each app gets a fresh service."""

    def factory(**overrides: str) -> Flask:
        IsnetTinyService._instance = None
        return create_app({**env, **overrides})

    yield factory
    IsnetTinyService._instance = None


@pytest.fixture
def app(make_app: Callable[..., Flask]) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def image_bytes(image: Image.Image, fmt: str, **save: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return buffer.getvalue()


def photo(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """A subject-on-background picture: a bright disc on a dark gradient."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    disc = ((x - width / 2) ** 2 + (y - height / 2) ** 2) < (min(size) / 3) ** 2
    rgb = np.stack([x * 255 // max(width, 1), y * 255 // max(height, 1), np.full_like(x, 60)], axis=-1)
    rgb[disc] = (250, 240, 230)
    return Image.fromarray(rgb.astype(np.uint8), "RGB").convert(mode)


def upload(data: bytes, name: str = "photo.png", **fields: str) -> dict[str, object]:
    return {"file": (io.BytesIO(data), name), **fields}


def tiny_onnx(path: Path, size: int = 32) -> Path:
    """A model with the IS-Net interface at a small size: input [1,3,s,s] -> sigmoid(mean over channels)."""
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])
    side = helper.make_tensor_value_info("side", TensorProto.FLOAT, [1, 1, size, size])
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=1),
        helper.make_node("Sigmoid", ["mean"], ["output"]),
        helper.make_node("Identity", ["mean"], ["side"]),
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(nodes, "tiny", [inp], [out, side], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def disc_onnx(path: Path, size: int = 64) -> Path:
    """A model that finds photo()'s bright disc, crisply, at `size` px: sigmoid(40 * (channel mean - 0.36)).

    After the pipeline's normalisation the disc's channel mean is about 0.46 and the gradient's at most
    0.26, so the mask is ~1 on the disc and ~0 elsewhere, soft only where it is resized to the photo.
    """
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, size, size])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, size, size])
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["mean"], keepdims=1),
        helper.make_node("Sub", ["mean", "threshold"], ["centred"]),
        helper.make_node("Mul", ["centred", "gain"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["output"]),
    ]
    constants = [helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
                 helper.make_tensor("threshold", TensorProto.FLOAT, [], [0.36]),
                 helper.make_tensor("gain", TensorProto.FLOAT, [], [40.0])]
    model = helper.make_model(helper.make_graph(nodes, "disc", [inp], [out], initializer=constants),
                              opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def wait_for_state(client: FlaskClient, wanted: set[str], seconds: float = 120) -> dict:
    """Poll /status until the model reaches one of `wanted` states; returns model_info."""
    deadline = time.monotonic() + seconds
    info: dict = {}
    while time.monotonic() < deadline:
        info = client.get("/api/bg/status").get_json()["model_info"]
        if info["state"] in wanted:
            return info
        time.sleep(0.1)
    raise AssertionError(f"state never reached {wanted}: {info}")


class LoopbackServer(http.server.ThreadingHTTPServer):
    """The tests' origin servers: a client that hangs up on purpose (a download cut off at its limit or
    deadline) is what the test wants, not a traceback in the test output."""

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def gunicorn(home: Path, app: str = "app_isnet_tiny:app", nofile: tuple[int, int] | None = None,
             **env: str | None) -> Iterator[tuple[str, subprocess.Popen, Path]]:
    """The production command (gunicorn -c gunicorn.conf.py) in a child process; yields (base URL, process, log).

    Folders, $HOME (gunicorn's control socket) and the log live in `home`; BG_MODEL and MODEL_PATH are
    unset, so it serves the bundled u2netp. `app` is the WSGI app to serve; `nofile` the child's (soft, hard)
    open-file limit; `env` overrides; a value of None unsets the variable.
    """
    port = free_port()
    settings: dict[str, str | None] = {
        **os.environ, "BG_MODEL": None, "MODEL_PATH": None, "PORT": str(port), "HOME": str(home),
        "MODEL_DIR": str(home / "models"), "UPLOAD_FOLDER": str(home / "up"), "PROCESSED_FOLDER": str(home / "out"),
        **env,
    }
    log = home / "gunicorn.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", app], cwd=ROOT,
            env={key: value for key, value in settings.items() if value is not None},
            stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=None if nofile is None else lambda: resource.setrlimit(resource.RLIMIT_NOFILE, nofile),
        )
    try:
        yield f"http://127.0.0.1:{port}", process, log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_healthy(base: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> requests.Response:
    """Poll /api/bg/health until it answers 200; a busy machine may refuse or answer slowly at first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and process.poll() is None:
        try:
            response = requests.get(f"{base}/api/bg/health", timeout=5)
            if response.status_code == 200:
                return response
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become healthy: " + log.read_text(errors="replace")[-2000:])


@contextmanager
def served(app: Callable) -> Iterator[str]:
    """A WSGI app on a free loopback port in a background thread; yields its base URL."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
