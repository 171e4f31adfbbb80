"""IsnetTinyService: one inference at a time, a bounded queue, 503 when full, a model from MODEL_PATH."""
from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.services.isnet_tiny_service import IsnetTinyService
from tests.conftest import image_bytes, photo, tiny_onnx, upload


class SlowSession:
    """Stands in for an onnxruntime session: records overlap, sleeps, returns a flat prediction."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.running = 0
        self.most_at_once = 0
        self._lock = threading.Lock()

    def run(self, outputs, feeds):
        with self._lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        time.sleep(self.seconds)
        with self._lock:
            self.running -= 1
        size = next(iter(feeds.values())).shape[-1]
        return [np.ones((1, 1, size, size), np.float32)]


def loaded_with_slow_session(make_app, seconds: float, **env: str):
    app = make_app(**env)
    service: IsnetTinyService = app.extensions["isnet_tiny"]
    service.wait_until_ready(30)
    slow = SlowSession(seconds)
    service._session = slow
    return app, service, slow


def post_many(app, count: int) -> list[int]:
    codes: list[int] = []
    data = image_bytes(photo(), "PNG")

    def one() -> None:
        response = app.test_client().post("/api/bg/remove", data=upload(data))
        codes.append(response.status_code)
        if response.status_code == 503:
            assert response.headers["Retry-After"] and "busy" in response.get_json()["error"]

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes


def test_one_inference_at_a_time(make_app):
    app, _, slow = loaded_with_slow_session(make_app, 0.2)
    codes = post_many(app, 4)
    assert codes == [200] * 4
    assert slow.most_at_once == 1


def test_inference_slots_run_that_many_at_once(make_app):
    app, service, slow = loaded_with_slow_session(make_app, 0.3, INFERENCE_SLOTS="2")
    codes = post_many(app, 6)
    assert codes == [200] * 6
    assert slow.most_at_once == 2
    assert app.test_client().get("/api/bg/status").get_json()["inference"]["slots"] == 2
    assert service.stats.inferences == 6


def test_clear_waits_for_the_last_of_several_running_inferences(make_app):
    app, service, slow = loaded_with_slow_session(make_app, 0.6, INFERENCE_SLOTS="2")
    workers = [threading.Thread(target=post_many, args=(app, 1)) for _ in range(2)]
    for worker in workers:
        worker.start()
    time.sleep(0.2)
    service.clear()  # returns once both have left their slots, never under a running inference
    assert slow.running == 0 and not service.loaded
    for worker in workers:
        worker.join()


def test_full_queue_gets_503_with_retry_after(make_app):
    app, service, slow = loaded_with_slow_session(make_app, 0.5, MAX_QUEUE="1", QUEUE_TIMEOUT_S="10")
    codes = post_many(app, 5)
    assert sorted(codes) == [200, 200, 503, 503, 503]
    assert service.stats.rejected_busy == 3 and service.queue_length == 0


def test_queue_timeout_gets_503(make_app):
    app, _, _ = loaded_with_slow_session(make_app, 0.8, MAX_QUEUE="8", QUEUE_TIMEOUT_S="0.2")
    codes = post_many(app, 3)
    assert sorted(codes) == [200, 503, 503]


def test_health_and_status_do_not_wait_behind_inference(make_app):
    app, _, _ = loaded_with_slow_session(make_app, 1.5)
    worker = threading.Thread(target=post_many, args=(app, 1))
    worker.start()
    time.sleep(0.2)
    started = time.monotonic()
    client = app.test_client()
    assert client.get("/api/bg/health").status_code == 200
    assert client.get("/api/bg/status").get_json()["model_info"]["state"] == "ready"
    assert time.monotonic() - started < 0.5
    worker.join()


def test_model_path_with_own_graph(make_app, tmp_path: Path):
    model = tiny_onnx(tmp_path / "own.onnx", size=32)
    app = make_app(MODEL_PATH=str(model))
    response = app.test_client().post("/api/bg/remove", data=upload(image_bytes(photo((50, 40)), "PNG")))
    assert response.status_code == 200
    info = app.test_client().get("/api/bg/status").get_json()["model_info"]
    assert info["source"] == "model_path" and info["input_size"] == 32 and info["name"] == "isnet-general-use"


def test_mask_is_min_max_normalised_prediction(make_app, tmp_path: Path):
    """With a known graph (sigmoid of the channel mean), bright pixels must come out opaque."""
    model = tiny_onnx(tmp_path / "own.onnx", size=32)
    app = make_app(MODEL_PATH=str(model), BG_MODEL="isnet-general-use")
    service: IsnetTinyService = app.extensions["isnet_tiny"]
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 16, 32))
    with service.slot() as input_size:
        assert input_size == 32
        mask = np.asarray(service.mask(image, (32, 32)))
    assert mask[:, :14].min() > 240 and mask[:, 18:].max() < 15


def test_mask_outside_the_slot_is_a_programming_error(make_app):
    service: IsnetTinyService = make_app().extensions["isnet_tiny"]
    service.wait_until_ready(30)
    with pytest.raises(RuntimeError, match="slot"):
        service.mask(Image.new("RGB", (8, 8)), (8, 8))


def test_clear_frees_and_reloads(make_app):
    app = make_app()
    service: IsnetTinyService = app.extensions["isnet_tiny"]
    service.wait_until_ready(30)
    assert service.loaded
    service.clear()
    assert not service.loaded and service.state.value == "not_loaded"
    service.wait_until_ready(30)
    assert service.loaded


def test_public_reasons_name_no_server_paths():
    from app.services.isnet_tiny_service import without_paths

    assert without_paths("Load model from /srv/models/bad.onnx failed") == "Load model from bad.onnx failed"
    assert without_paths("/root/.cache/x/u2netp.onnx failed its sha256 check") == "u2netp.onnx failed its sha256 check"
    url = "download of u2netp from https://mirror.example/models/u2netp.onnx failed"
    assert without_paths(url) == url


def test_arena_session_gives_the_same_mask(make_app, tmp_path: Path):
    """ORT_ARENA=1 changes only where activations live, not the result."""
    model = tiny_onnx(tmp_path / "own.onnx", size=32)
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 16, 32))
    masks = []
    for arena in ("0", "1"):
        app = make_app(MODEL_PATH=str(model), BG_MODEL="isnet-general-use", ORT_ARENA=arena)
        service: IsnetTinyService = app.extensions["isnet_tiny"]
        assert service.config.ort_arena is (arena == "1")
        with service.slot():
            masks.append(np.asarray(service.mask(image, (32, 32))))
            masks.append(np.asarray(service.mask(image, (32, 32))))  # a second run after the arena shrank
    assert all(np.array_equal(masks[0], mask) for mask in masks[1:])
