"""app/heap.py: big buffers are fresh mappings, except inside scratch(), which the edge stage runs in."""
from __future__ import annotations

import io
import resource
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from app import heap, matting

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or heap._LIBC is None
                                or not hasattr(heap._LIBC, "mallopt"), reason="glibc's mallopt")

MB = 1 << 20


def _faults_per_buffer(rounds: int = 40) -> float:
    """Minor page faults this thread takes per 1 MB numpy buffer made, filled and freed."""
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(rounds):
        buffer = np.empty(MB, dtype=np.uint8)
        buffer.fill(1)
        del buffer
    return (resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before) / rounds


@pytest.fixture
def tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    heap.tune_malloc()


def test_outside_scratch_every_big_buffer_is_a_fresh_mapping(tuned: None) -> None:
    assert _faults_per_buffer() >= 200  # 256 pages of 4 KB, faulted in again each time


def test_inside_scratch_big_buffers_reuse_the_heap_and_the_setting_is_restored(tuned: None) -> None:
    with heap.scratch():
        _faults_per_buffer(2)  # the first ones grow the heap
        assert _faults_per_buffer() < 20
    assert heap._scratch_users == 0
    assert _faults_per_buffer() >= 200


def test_scratch_holds_while_any_thread_is_inside(tuned: None) -> None:
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with heap.scratch():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    try:
        assert inside.wait(10)
        with heap.scratch():
            pass
        _faults_per_buffer(2)
        assert _faults_per_buffer() < 20  # the other thread is still inside
    finally:
        leave.set()
        thread.join(10)
    assert heap._scratch_users == 0
    assert _faults_per_buffer() >= 200


def test_an_explicit_glibc_setting_wins(tuned: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    with heap.scratch():
        assert _faults_per_buffer() >= 200


def test_the_edge_stage_runs_in_scratch(client, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, int]] = []
    refine, decontaminate = matting.refine, matting.decontaminate

    def watched(name: str, function):
        def call(*args, **kwargs):
            seen.append((name, heap._scratch_users))
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(matting, "refine", watched("refine", refine))
    monkeypatch.setattr(matting, "decontaminate", watched("decontaminate", decontaminate))
    photo = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 40)).save(photo, "PNG")
    response = client.post("/api/bg/remove", data={"file": (io.BytesIO(photo.getvalue()), "p.png")},
                           content_type="multipart/form-data")
    assert response.status_code == 200
    assert [name for name, _ in seen] == ["refine", "decontaminate"]
    assert all(users >= 1 for _, users in seen)
    assert heap._scratch_users == 0
