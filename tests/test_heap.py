"""app/heap.py: big buffers are their own mappings, except inside scratch(), which the edge stage runs in."""
from __future__ import annotations

import ctypes
import io
import sys
import threading

import numpy as np
import pytest
from PIL import Image

from app import heap, matting

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or heap._LIBC is None
                                or not hasattr(heap._LIBC, "mallinfo2"), reason="glibc's mallopt and mallinfo2")


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mapped_chunks() -> int:
    mallinfo2 = heap._LIBC.mallinfo2
    mallinfo2.restype = _Mallinfo2
    return mallinfo2().hblks


def _is_own_mapping(nbytes: int = 1 << 20) -> bool:
    """Whether glibc serves a buffer of nbytes (1 MB: the size of an edge-stage temporary) as its own mmap."""
    before = _mapped_chunks()
    buffer = np.empty(nbytes, dtype=np.uint8)
    mapped = _mapped_chunks() > before
    del buffer
    return mapped


@pytest.fixture
def tuned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    heap.tune_malloc()


def test_outside_scratch_every_big_buffer_is_its_own_mapping(tuned: None) -> None:
    assert _is_own_mapping()
    assert not _is_own_mapping(64 * 1024)


def test_inside_scratch_big_buffers_come_from_the_heap_and_the_setting_is_restored(tuned: None) -> None:
    with heap.scratch():
        assert not _is_own_mapping()
        assert not _is_own_mapping(heap.SCRATCH_MMAP_THRESHOLD // 2)
        assert _is_own_mapping(heap.SCRATCH_MMAP_THRESHOLD * 2)
    assert heap._scratch_users == 0
    assert _is_own_mapping()


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
        assert not _is_own_mapping()  # the other thread is still inside
    finally:
        leave.set()
        thread.join(10)
    assert heap._scratch_users == 0
    assert _is_own_mapping()


def test_an_explicit_glibc_setting_wins(tuned: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    with heap.scratch():
        assert _is_own_mapping()


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
