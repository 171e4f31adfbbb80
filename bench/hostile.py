"""Replay issue 10's hostile list against the deployed server and print whole-server peak RSS per case.

Each case gets a fresh server started as deployed: `gunicorn -c gunicorn.conf.py app_isnet_tiny:app` with the
runtime ENV read from Dockerfile.isnet-tiny (MALLOC_ARENA_MAX, GLIBC_TUNABLES, ORT_THREADS=auto, PRELOAD_MODEL,
FLASK_ENV=production, ...) and BG_MODEL/MODEL_DIR. One ordinary upload loads the model first, then
the case runs; whole-server peak = VmHWM of the gunicorn master + VmHWM of its worker (an upper bound on the
peak of their sum). Inputs are generated once into bench/out/hostile-inputs/.

    .venv/bin/python bench/hostile.py [--model isnet-general-tiny] [--model-dir /work/models]
        [--port 6050] [--case PREFIX ...] [--worker gthread] [--json OUT]
    .venv/bin/python bench/hostile.py --front [--connections 1000] [--idle 3000] [--seconds 30] [--case PREFIX ...]
        [--target http://127.0.0.1:8080] [--pin] [--profile DIR]
    .venv/bin/python bench/hostile.py --latency 8 [--variant INFERENCE_NICE=0 --variant INFERENCE_NICE=10]

--worker overrides gunicorn's worker class through GUNICORN_CMD_ARGS, to compare with the old gthread front.
--front runs the attacks on the HTTP front instead (bench/slow_attacks.py: slowhttptest -H, -B, -R and -X
with pipelining 1-5, and three socket floods), each against a fresh server, and prints health, recovery,
memory and spool figures; with --target it attacks a server that is already running (a container) and
reports health and recovery only. --latency RUNS measures no attack: the median of RUNS uploads of a
1024 px photo against a fresh deployed server per --variant (extra ENV), the variants alternating for
--rounds rounds, to check that a setting made for attacks costs nothing when there is none. --pin runs
the server on CPU 0 and the attacker on CPU 1 (taskset), a closer picture of an attacker on another
machine; --profile DIR records the worker with py-spy (PY_SPY, or py-spy on PATH) for the middle half of
each attack.
Exit status 1 if a case gets a status it should not (5xx, or a refusal of something that should be served),
or, with --front, if an attack misses one of issue 16's goals.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import compare_rembg  # noqa: E402
import slow_attacks  # noqa: E402

INPUTS = common.BENCH / "out" / "hostile-inputs"
# The Dockerfile's runtime ENV, read from the Dockerfile itself (less the image's own paths and port).
DEPLOYED_ENV = {key: value for key, value in compare_rembg.dockerfile_runtime_env().items()
                if key not in compare_rembg.NOT_FROM_DOCKERFILE}
TIMEOUT_S = 180
PIN_SERVER = ["taskset", "-c", "0"]
PIN_ATTACKER = ["taskset", "-c", "1"]


# --------------------------------------------------------------------------- inputs


def _scene(width: int, height: int) -> np.ndarray:
    """A compressible photo-like RGB scene: gradients, a disc and a little structure."""
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None]
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :]
    rgb = np.empty((height, width, 3), dtype=np.uint8)
    rgb[..., 0] = (x + 0 * y).astype(np.uint8)
    rgb[..., 1] = (y + 0 * x).astype(np.uint8)
    rgb[..., 2] = ((x + y) / 2).astype(np.uint8)
    cy, cx, r = height // 2, width // 2, min(width, height) // 3
    yy, xx = np.ogrid[:height, :width]
    rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (240, 230, 220)
    return rgb


def _noisy(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """Add fine noise so a lossy encoder has real work (photo-like file sizes)."""
    noise = np.random.default_rng(seed).integers(-12, 12, size=rgb.shape[:2], dtype=np.int16)[..., None]
    return np.clip(rgb.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png_rgba16(width: int, height: int) -> bytes:
    """A 16-bit RGBA PNG (colour type 6, depth 16), built by hand: Pillow cannot write one."""
    row = np.zeros((width, 4), dtype=">u2")
    row[:, 0] = np.linspace(0, 65535, width)
    row[:, 1] = 30000
    row[:, 2] = np.linspace(65535, 0, width)
    row[:, 3] = 65535
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(b"\x00" + row.tobytes())]  # filter None, then Up: later rows are all zeros
    parts += [compressor.compress(b"\x02" + bytes(row.nbytes)) for _ in range(height - 1)]
    parts.append(compressor.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def _png_ztxt(chunks: int = 63, inflated: int = 1_000_000) -> bytes:
    """A small PNG carrying `chunks` zTXt chunks of `inflated` bytes each (Pillow's default per-chunk cap)."""
    image = Image.fromarray(_scene(640, 480))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    data = buffer.getvalue()
    text = (b"lorem ipsum dolor sit amet " * (inflated // 27 + 1))[: inflated - 1]
    extra = b"".join(_png_chunk(b"zTXt", f"k{i}".encode() + b"\0\0" + zlib.compress(text, 9)) for i in range(chunks))
    return data[:33] + extra + data[33:]  # after IHDR, before IDAT: inflated by Image.open itself


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _mpo() -> bytes:
    first = Image.fromarray(_noisy(_scene(4000, 3000)))
    gain_map = Image.fromarray(_scene(1000, 750)).convert("L").convert("RGB")
    return _save(first, "MPO", save_all=True, append_images=[gain_map], quality=90)


GENERATORS: dict[str, Callable[[], bytes]] = {
    "jpeg-24mp.jpg": lambda: _save(Image.fromarray(_noisy(_scene(6000, 4000))), "JPEG", quality=85),
    "webp-lossless-16383x2441.webp": lambda: _save(Image.new("RGB", (16383, 2441), (200, 120, 40)), "WEBP",
                                                   lossless=True),
    "webp-lossy-24mp.webp": lambda: _save(Image.fromarray(_noisy(_scene(6000, 4000))), "WEBP", quality=75),
    "webp-lossy-12mp.webp": lambda: _save(Image.fromarray(_noisy(_scene(4032, 3024))), "WEBP", quality=75),
    # the largest 4:3 WebP whose estimate fits the default MAX_DECODE_MB (300): 299 MB
    "webp-lossy-4320x3240.webp": lambda: _save(Image.fromarray(_noisy(_scene(4320, 3240))), "WEBP", quality=75),
    "tiff-float-6320.tiff": lambda: _save(Image.fromarray(
        np.tile(np.linspace(0, 1, 6320, dtype=np.float32)[:, None], (1, 6320)), mode="F"), "TIFF",
        compression="tiff_deflate"),
    "tiff-int32-6320.tiff": lambda: _save(Image.fromarray(
        np.tile(np.arange(6320, dtype=np.int32)[:, None] * 10, (1, 6320)), mode="I"), "TIFF",
        compression="tiff_deflate"),
    "png-rgba-6320.png": lambda: _save(Image.fromarray(np.dstack([_scene(6320, 6320), np.full((6320, 6320), 255,
                                                                                            np.uint8)])), "PNG"),
    "png-la-6320.png": lambda: _save(Image.fromarray(_scene(6320, 6320)).convert("LA"), "PNG"),
    "png-grey16-6320.png": lambda: _save(Image.fromarray(
        (np.tile(np.arange(6320, dtype=np.uint16) * 10, (6320, 1)))), "PNG"),
    "png-rgba16-6320.png": lambda: _png_rgba16(6320, 6320),
    "png-63-ztxt.png": _png_ztxt,
    "mpo-12mp.jpg": _mpo,
    "photo-1024.jpg": lambda: _save(Image.fromarray(_noisy(_scene(1024, 768))), "JPEG", quality=90),
}


def inputs() -> dict[str, bytes]:
    INPUTS.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, make in GENERATORS.items():
        path = INPUTS / name
        if not path.is_file():
            print(f"generating {name} ...", flush=True)
            path.write_bytes(make())
        out[name] = path.read_bytes()
    return out


# --------------------------------------------------------------------------- cases


@dataclass
class Outcome:
    statuses: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    failed: bool = False

    def count(self, status: int | str) -> None:
        self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1


def _post(base: str, path: str, files: dict, data: dict | None = None) -> requests.Response:
    return requests.post(base + path, files=files, data=data or {}, timeout=TIMEOUT_S)


def _one(name: str, path: str = "/api/bg/remove", expect: tuple[int, ...] = (200,), bg: str | None = None,
         clients: int = 1) -> Callable[[str, dict[str, bytes]], Outcome]:
    def run(base: str, data: dict[str, bytes]) -> Outcome:
        outcome = Outcome()
        lock = threading.Lock()

        def client() -> None:
            files = {"file": (name, data[name])}
            if bg is not None:
                files["bg_image"] = (bg, data[bg])
            try:
                response = _post(base, path, files)
                status, text = response.status_code, (response.json().get("error", "") if response.status_code != 200
                                                       else "")
            except requests.RequestException as exc:
                status, text = "error", str(exc)[:120]
            with lock:
                outcome.count(status)
                if status not in expect:
                    outcome.failed = True
                if text and text not in outcome.notes:
                    outcome.notes.append(text)

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcome

    return run


EIGHT_CLIENT_MIX = [
    ("png-rgba-6320.png", "/api/bg/remove", None),
    ("tiff-float-6320.tiff", "/api/bg/remove", None),
    ("png-la-6320.png", "/api/bg/remove", None),
    ("webp-lossy-12mp.webp", "/api/bg/change_color", "webp-lossy-12mp.webp"),
    ("png-rgba16-6320.png", "/api/bg/remove", None),
    ("tiff-int32-6320.tiff", "/api/bg/remove", None),
    ("jpeg-24mp.jpg", "/api/bg/change_color", "png-grey16-6320.png"),
    ("mpo-12mp.jpg", "/api/bg/remove", None),
]


def eight_clients(base: str, data: dict[str, bytes]) -> Outcome:
    """8 clients at once, each posting a different costly accepted input (2 rounds)."""
    outcome = Outcome()
    lock = threading.Lock()

    def client(name: str, path: str, bg: str | None) -> None:
        for _ in range(2):
            files = {"file": (name, data[name])}
            if bg:
                files["bg_image"] = (bg, data[bg])
            try:
                status = _post(base, path, files).status_code
            except requests.RequestException:
                status = "error"
            with lock:
                outcome.count(status)
                if status not in (200, 503):
                    outcome.failed = True
            if status == 503:
                time.sleep(2)

    threads = [threading.Thread(target=client, args=spec) for spec in EIGHT_CLIENT_MIX]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


def _slow_header(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /api/bg/remove HTTP/1.1\r\nHost: x\r\n")
        index = 0
        while not stop.wait(3.0):
            try:
                sock.sendall(f"X-Slow-{index}: {index}\r\n".encode())
            except OSError:
                return
            index += 1


def _slow_body(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /api/bg/remove HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                     b"Content-Length: 100000\r\n\r\n--b\r\n")
        while not stop.wait(1.0):
            try:
                sock.sendall(b"x")
            except OSError:
                return


def _idle(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port)):
        stop.wait()


def slow_clients(base: str, data: dict[str, bytes]) -> Outcome:
    """60 slow clients (20 slow headers, 20 slow bodies, 20 idle) for 20 s; meanwhile /health every 0.5 s and
    ordinary uploads one after another."""
    outcome = Outcome()
    port = int(base.rsplit(":", 1)[1])
    stop = threading.Event()
    holders = [threading.Thread(target=kind, args=(port, stop), daemon=True)
               for kind in (_slow_header, _slow_body, _idle) for _ in range(20)]
    for thread in holders:
        thread.start()
    time.sleep(2.0)
    health: list[float] = []
    uploads: list[float] = []

    def probe() -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                ok = requests.get(base + "/api/bg/health", timeout=10).status_code == 200
            except requests.RequestException:
                ok = False
            health.append(time.monotonic() - started if ok else float("inf"))
            stop.wait(0.5)

    prober = threading.Thread(target=probe)
    prober.start()
    deadline = time.monotonic() + 18
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            status = requests.post(base + "/api/bg/remove", files={"file": ("p.jpg", data["photo-1024.jpg"])},
                                   timeout=30).status_code
        except requests.RequestException:
            status = "error"
        outcome.count(status)
        if status == 200:
            uploads.append(time.monotonic() - started)
        else:
            outcome.failed = True
    stop.set()
    prober.join()
    worst = max(health) if health else float("inf")
    outcome.notes.append(f"health: {len(health)} probes, max {worst:.3f} s, median {sorted(health)[len(health) // 2]:.3f} s"
                         if health else "health: no probe")
    outcome.notes.append(f"uploads meanwhile: {len(uploads)} x 200, max {max(uploads, default=0):.2f} s")
    if worst >= 1.0:
        outcome.failed = True
    return outcome


def queued_without_clear(base: str, data: dict[str, bytes]) -> Outcome:
    """The control for clear_under_load: the same 9 uploads, no clear_cache."""
    return clear_under_load(base, data, clear=False)


def clear_under_load(base: str, data: dict[str, bytes], clear: bool = True) -> Outcome:
    """9 uploads at once (1 runs, 8 queue), then clear_cache: its latency, and no upload may fail because of it
    (a 503 "busy" after QUEUE_TIMEOUT_S is reported but is the queue's policy, not a failure of clear_cache)."""
    outcome = Outcome()
    lock = threading.Lock()

    def client() -> None:
        text = ""
        started = time.monotonic()
        try:
            response = _post(base, "/api/bg/remove", {"file": ("p.jpg", data["photo-1024.jpg"])})
            status = response.status_code
            text = response.json().get("error", "") if status != 200 else ""
        except requests.RequestException as exc:
            status, text = "error", str(exc)[:120]
        with lock:
            outcome.count(status)
            # A 503 "busy" after QUEUE_TIMEOUT_S is the admission policy, not clear_cache; anything else fails.
            if status != 200 and "busy" not in text:
                outcome.failed = True
            if text:
                outcome.notes.append(f"{status} after {time.monotonic() - started:.1f} s: {text}")

    threads = [threading.Thread(target=client) for _ in range(9)]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    if clear:
        started = time.monotonic()
        cleared = requests.post(base + "/api/bg/clear_cache", timeout=TIMEOUT_S)
        outcome.notes.append(f"clear_cache {cleared.status_code} in {time.monotonic() - started:.2f} s")
    for thread in threads:
        thread.join()
    return outcome


CASES: dict[str, Callable[[str, dict[str, bytes]], Outcome]] = {
    "jpeg 24 MP (reference)": _one("jpeg-24mp.jpg"),
    "webp lossless 16383x2441": _one("webp-lossless-16383x2441.webp", expect=(413,)),
    "webp lossy 24 MP": _one("webp-lossy-24mp.webp", expect=(413,)),
    "webp lossy 12 MP (4032x3024)": _one("webp-lossy-12mp.webp"),
    "webp lossy 4320x3240 (largest 4:3 under the default MAX_DECODE_MB)": _one("webp-lossy-4320x3240.webp"),
    "tiff float 6320x6320": _one("tiff-float-6320.tiff"),
    "tiff int32 6320x6320": _one("tiff-int32-6320.tiff"),
    "png RGBA 6320x6320": _one("png-rgba-6320.png"),
    "png LA 6320x6320": _one("png-la-6320.png"),
    "png 16-bit grey 6320x6320": _one("png-grey16-6320.png"),
    "png 16-bit RGBA 6320x6320": _one("png-rgba16-6320.png"),
    "change_color webp 12 MP + bg_image webp 12 MP": _one("webp-lossy-12mp.webp", "/api/bg/change_color",
                                                          bg="webp-lossy-12mp.webp"),
    "change_color webp 16383x2441 as file and bg_image": _one("webp-lossless-16383x2441.webp", "/api/bg/change_color",
                                                              expect=(413,), bg="webp-lossless-16383x2441.webp"),
    "png 63 zTXt x 12 at once": _one("png-63-ztxt.png", expect=(413,), clients=12),
    "MPO (JPEG + second picture)": _one("mpo-12mp.jpg"),
    "8 clients, costly inputs x 2": eight_clients,
    "60 slow clients": slow_clients,
    "clear_cache with 8 queued": clear_under_load,
    "8 queued, no clear_cache (control)": queued_without_clear,
}


# --------------------------------------------------------------------------- driver


def _server(args: argparse.Namespace, port: int, extra_env: dict[str, str] | None = None) -> common.Server:
    work = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
    env = common.base_env(port, work)
    env.update(DEPLOYED_ENV)
    env.update(BG_MODEL=args.model, MODEL_DIR=str(args.model_dir), LOG_LEVEL="warning", **(extra_env or {}))
    if args.worker:
        env["GUNICORN_CMD_ARGS"] = f"--worker-class {args.worker}"
    argv = [*(PIN_SERVER if getattr(args, "pin", False) else []), str(common.VENV_BIN / "gunicorn"),
            *common.GUNICORN_APP]
    return common.Server("hostile", argv, env, port, work / "server.log", work / "uploads", work / "processed")


def run_case(args: argparse.Namespace, name: str, data: dict[str, bytes], port: int) -> dict:
    with _server(args, port) as server:
        warm = _post(server.base, "/api/bg/remove", {"file": ("p.jpg", data["photo-1024.jpg"])})
        before = server.memory()
        started = time.monotonic()
        outcome = CASES[name](server.base, data)
        seconds = time.monotonic() - started
        memory = server.memory()
        server.check_worker()
    worker, master = memory["worker_hwm_mb"] or 0.0, memory["master_hwm_mb"] or 0.0
    return {
        "case": name, "statuses": outcome.statuses, "notes": outcome.notes + server.notes, "failed": outcome.failed,
        "warm_up_status": warm.status_code, "worker_hwm_after_warm_up_mb": before["worker_hwm_mb"],
        "worker_hwm_mb": worker, "master_hwm_mb": master, "whole_server_peak_mb": round(worker + master, 1),
        "seconds": round(seconds, 1),
    }


def table(results: list[dict]) -> str:
    lines = ["| case | statuses | whole-server peak MB (master + worker VmHWM) | worker after warm-up | notes |",
             "| --- | --- | --- | --- | --- |"]
    for r in results:
        statuses = ", ".join(f"{k} x{v}" for k, v in sorted(r["statuses"].items()))
        notes = "; ".join(n[:160] for n in r["notes"]) or ""
        flag = " **FAILED**" if r["failed"] else ""
        lines.append(f"| {r['case']}{flag} | {statuses} | {r['whole_server_peak_mb']:.0f} ({r['master_hwm_mb']:.0f} + "
                     f"{r['worker_hwm_mb']:.0f}) | {r['worker_hwm_after_warm_up_mb']} | {notes} |")
    return "\n".join(lines)


def _profile(args: argparse.Namespace, name: str, pid: int) -> threading.Thread:
    """py-spy on `pid` for the middle half of the attack, into args.profile (collapsed stacks)."""
    out = args.profile / (name.replace(" ", "_").replace(",", "").replace("/", "_") + ".txt")

    def record() -> None:
        time.sleep(args.seconds / 4)
        subprocess.run([os.environ.get("PY_SPY", "py-spy"), "record", "--pid", str(pid), "--nonblocking",
                        "--duration", str(max(1, int(args.seconds / 2))), "--rate", "200", "--format", "raw",
                        "--threads", "--output", str(out)], stdout=subprocess.DEVNULL, check=False)

    args.profile.mkdir(parents=True, exist_ok=True)
    thread = threading.Thread(target=record, daemon=True)
    thread.start()
    return thread


def run_front_case(args: argparse.Namespace, name: str, photo: bytes, port: int) -> dict:
    logs = Path(tempfile.mkdtemp(prefix="bench-front-"))
    pin = PIN_ATTACKER if args.pin else []
    if args.target:
        attack = slow_attacks.attacks(args.target, args.connections, args.seconds, logs, args.idle, pin)[name]()
        result = slow_attacks.run_attack(attack, args.target, args.seconds, photo, None)
        notes: list[str] = []
    else:
        with _server(args, port) as server:
            _post(server.base, "/api/bg/remove", {"file": ("p.jpg", photo)})  # the model loaded, as in service
            attack = slow_attacks.attacks(server.base, args.connections, args.seconds, logs, args.idle, pin)[name]()
            profiler = _profile(args, name, server.worker) if args.profile and server.worker else None
            result = slow_attacks.run_attack(attack, server.base, args.seconds, photo, server)
            if profiler is not None:
                profiler.join()
            server.check_worker()
            notes = server.notes
    name += " (pinned: server CPU 0, attacker CPU 1)" if args.pin else ""
    result.update(attack=name, detail=attack.detail, notes=notes)
    result["missed"] = slow_attacks.verdict(result)
    return result


def run_all(args: argparse.Namespace, title: str, names: list[str], run_one: Callable[[str, int], dict],
            render: Callable[[list[dict]], str], failed: Callable[[dict], bool]) -> int:
    """Run each named case on its own port, print each result as a JSON line, then the table; 1 if any failed."""
    print(f"# {title}")
    print(f"# {common.machine()}")
    print(f"# {common.command_line()}")
    results = []
    for index, name in enumerate(names):
        result = run_one(name, args.port + index % 10)
        results.append(result)
        print(json.dumps(result), flush=True)
    print()
    print(render(results))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": common.machine(), "command": common.command_line(),
                                         "results": results}, indent=2))
    return 1 if any(failed(r) for r in results) else 0


def selected(names: list[str], prefixes: list[str]) -> list[str]:
    """The names that start with one of `prefixes` (all of them if there is none)."""
    return [n for n in names if not prefixes or any(n.startswith(p) for p in prefixes)]


def front(args: argparse.Namespace) -> int:
    if not slow_attacks.have_slowhttptest():
        print("slowhttptest is not installed (Debian package slowhttptest)")
        return 1
    photo = inputs()["photo-1024.jpg"]
    base = args.target or "http://127.0.0.1:0"
    names = selected(list(slow_attacks.attacks(base, args.connections, args.seconds, Path("."), args.idle)),
                     args.cases)
    title = (f"bench/hostile.py --front, model {args.model}, {args.connections} connections, {args.seconds:.0f} s "
             f"each, target {args.target or 'a fresh deployed server per attack'}")
    return run_all(args, title, names, lambda name, port: run_front_case(args, name, photo, port),
                   slow_attacks.table, lambda r: bool(r["missed"]))


def latency(args: argparse.Namespace) -> int:
    """Median upload time with no attack, per --variant, the variants alternating round by round."""
    photo = inputs()["photo-1024.jpg"]
    variants = args.variant or [""]
    times: dict[str, list[float]] = {variant: [] for variant in variants}
    print(f"# bench/hostile.py --latency {args.latency}, model {args.model}, {args.rounds} rounds")
    print(f"# {common.machine()}")
    print(f"# {common.command_line()}")
    for round_ in range(args.rounds):
        for variant in variants:
            extra = dict(item.split("=", 1) for item in variant.split(",") if item)
            with _server(args, args.port, extra) as server:
                _post(server.base, "/api/bg/remove", {"file": ("p.jpg", photo)})  # the model loaded and warm
                for _ in range(args.latency):
                    started = time.monotonic()
                    response = _post(server.base, "/api/bg/remove", {"file": ("p.jpg", photo)})
                    times[variant].append(time.monotonic() - started)
                    if response.status_code != 200:
                        print(f"{variant or 'default'}: upload answered {response.status_code}")
                        return 1
            print(json.dumps({"round": round_, "variant": variant or "default", "loadavg": common.loadavg(),
                              "seconds": [round(t, 3) for t in times[variant][-args.latency:]]}), flush=True)
    print()
    print("| variant | uploads | median (s) | min (s) |")
    print("| --- | --- | --- | --- |")
    for variant, seconds in times.items():
        print(f"| {variant or 'default'} | {len(seconds)} | {statistics.median(seconds):.3f} | {min(seconds):.3f} |")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="isnet-general-tiny")
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get("MODEL_DIR", "/work/models")))
    parser.add_argument("--port", type=int, default=6050)
    parser.add_argument("--case", "--cases", dest="cases", action="append", default=[],
                        help="a case name prefix (repeat for more; names contain commas); default all")
    parser.add_argument("--worker", default="", help="override gunicorn's worker class (e.g. gthread)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--front", action="store_true", help="attack the HTTP front (bench/slow_attacks.py)")
    parser.add_argument("--connections", type=int, default=1000, help="--front: hostile connections")
    parser.add_argument("--idle", type=int, default=0,
                        help="--front: connections of the idle/half-header flood (default 3 x --connections)")
    parser.add_argument("--seconds", type=float, default=30.0, help="--front: each attack's duration")
    parser.add_argument("--target", default="", help="--front: attack this running server instead")
    parser.add_argument("--pin", action="store_true", help="--front: server on CPU 0, attacker on CPU 1 (taskset)")
    parser.add_argument("--profile", type=Path, help="--front: py-spy the worker into this directory")
    parser.add_argument("--latency", type=int, default=0, help="no attack: RUNS timed uploads per server")
    parser.add_argument("--variant", action="append", default=[],
                        help="--latency: extra ENV for one server, KEY=VALUE[,KEY=VALUE] (repeat to compare)")
    parser.add_argument("--rounds", type=int, default=2, help="--latency: rounds of the variants, alternating")
    args = parser.parse_args()
    if args.front and args.target:
        return front(args)
    if args.model == "isnet-general-tiny" and common.tiny_model(args.model_dir) is None:
        print(f"SKIPPED: no isnet-general-tiny in {args.model_dir}")
        return 0
    if args.front:
        return front(args)
    if args.latency:
        return latency(args)
    data = inputs()
    return run_all(args, f"bench/hostile.py, model {args.model}, worker {args.worker or 'gunicorn.conf.py'}",
                   selected(list(CASES), args.cases), lambda name, port: run_case(args, name, data, port),
                   table, lambda r: bool(r["failed"]))


if __name__ == "__main__":
    sys.exit(main())
