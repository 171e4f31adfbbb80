"""app/heap.py: big buffers are their own mappings, except inside scratch(), which the edge stage runs in."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from app import heap, matting

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or heap._LIBC is None
                                or not hasattr(heap._LIBC, "mallopt")
                                or not hasattr(heap._LIBC, "gnu_get_libc_version"), reason="glibc's malloc")


# Run in a fresh interpreter: a process whose heap already holds big free chunks (left by an earlier scratch,
# their pages trimmed) serves later buffers from them whatever the threshold, so only a clean heap shows it.
PROBE = r"""
import ctypes, json, os, sys, threading
from app import heap

IS_MMAPPED = 0x2  # glibc's flag in the size word just before the pointer malloc returns
malloc, free = heap._LIBC.malloc, heap._LIBC.free
malloc.restype, malloc.argtypes, free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]


def own(nbytes=1 << 20):
    # whether glibc serves nbytes (1 MB: an edge-stage temporary; numpy's buffers come from malloc) as its own mmap
    pointer = malloc(nbytes)
    try:
        return bool(ctypes.c_size_t.from_address(pointer - ctypes.sizeof(ctypes.c_size_t)).value & IS_MMAPPED)
    finally:
        free(pointer)


os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
heap.tune_malloc()
seen = {"outside_1mb": own(), "outside_64kb": own(64 * 1024)}
with heap.scratch():
    seen.update(inside_1mb=own(), inside_half=own(heap.SCRATCH_MMAP_THRESHOLD // 2),
                inside_twice=own(heap.SCRATCH_MMAP_THRESHOLD * 2))
seen.update(after_1mb=own(), users_after=heap._scratch_users)
inside, leave = threading.Event(), threading.Event()


def other():
    with heap.scratch():
        inside.set()
        leave.wait(10)


thread = threading.Thread(target=other)
thread.start()
inside.wait(10)
with heap.scratch():
    pass
seen["other_thread_inside_1mb"] = own()
leave.set()
thread.join(10)
seen.update(other_thread_left_1mb=own(), users_at_end=heap._scratch_users)
os.environ["MALLOC_MMAP_THRESHOLD_"] = str(128 * 1024)
with heap.scratch():
    seen["explicit_setting_inside_1mb"] = own()
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def probed() -> dict[str, object]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    done = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_outside_scratch_every_big_buffer_is_its_own_mapping(probed: dict[str, object]) -> None:
    assert probed["outside_1mb"] is True
    assert probed["outside_64kb"] is False


def test_inside_scratch_big_buffers_come_from_the_heap_and_the_setting_is_restored(probed: dict[str, object]) -> None:
    assert probed["inside_1mb"] is False and probed["inside_half"] is False
    assert probed["inside_twice"] is True
    assert probed["after_1mb"] is True and probed["users_after"] == 0


def test_scratch_holds_while_any_thread_is_inside(probed: dict[str, object]) -> None:
    assert probed["other_thread_inside_1mb"] is False
    assert probed["other_thread_left_1mb"] is True and probed["users_at_end"] == 0


def test_an_explicit_glibc_setting_wins(probed: dict[str, object]) -> None:
    assert probed["explicit_setting_inside_1mb"] is True


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
