"""Load and soak test of the real production server (fresh process per run), loopback only.

    .venv/bin/python bench/load.py --model u2netp --clients 8 --seconds 60 [--json OUT]
    .venv/bin/python bench/load.py --model u2netp --sequential 200 [--json OUT]

Concurrent mode: C client threads, each with its own keep-alive `requests` session, post the fixture
photos scaled to 1024 px on the long side (JPEG q90, made once in memory) to /api/bg/remove in a loop
until S seconds have passed (a request already in flight is allowed to finish; 120 s client timeout).
A 503 is counted and the client sleeps min(Retry-After, 2 s) before its next request.

Sequential mode: N uploads one after another; worker VmRSS after the 10th and after the last.

Both modes: one warm-up upload first (not counted), a separate thread polls GET /api/bg/health every
0.5 s and records its latency (10 s timeout, counted as a failure), another samples the worker's VmRSS
every 0.5 s; every 200 is decoded (Pillow load) and must be an RGBA PNG of the upload's size; 5xx other
than 503 must be 0 (exit status 1 otherwise). Afterwards: UPLOAD_FOLDER and PROCESSED_FOLDER must be
empty, then POST /api/bg/clear_cache with the worker's VmRSS before and after, then one more upload to
show the model reloads. Peak RSS is the gunicorn worker's VmHWM from /proc/PID/status.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

CLIENT_TIMEOUT_S = 120.0
HEALTH_TIMEOUT_S = 10.0


def photos_1024() -> list[tuple[str, bytes, tuple[int, int]]]:
    """(name, JPEG bytes, size) with the long side scaled to exactly 1024 px."""
    out = []
    for path in common.fixture_images():
        image = Image.open(path)
        image.load()
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image).convert("RGB")
        scale = 1024 / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        out.append((path.stem + "-1024.jpg", buffer.getvalue(), size))
    return out


class Recorder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[dict] = []
        self.bad_images: list[str] = []

    def add(self, entry: dict) -> None:
        with self.lock:
            self.requests.append(entry)


def upload(http: requests.Session, base: str, photo: tuple[str, bytes, tuple[int, int]], rec: Recorder) -> dict:
    name, data, size = photo
    started = time.perf_counter()
    entry: dict = {"photo": name, "t0": started}
    try:
        r = http.post(base + "/api/bg/remove", files={"file": (name, data, "image/jpeg")}, timeout=CLIENT_TIMEOUT_S)
    except requests.RequestException as exc:
        entry.update(status="exception", error=type(exc).__name__, seconds=time.perf_counter() - started)
        rec.add(entry)
        return entry
    entry.update(status=r.status_code, seconds=time.perf_counter() - started)
    if r.status_code == 200:
        try:
            image = Image.open(io.BytesIO(r.content))
            image.load()
            if image.format != "PNG" or image.mode != "RGBA" or image.size != size:
                raise ValueError(f"{image.format} {image.mode} {image.size}, expected PNG RGBA {size}")
        except Exception as exc:  # any undecodable or wrong image is a finding
            with rec.lock:
                rec.bad_images.append(f"{name}: {exc}")
            entry["bad_image"] = str(exc)
    else:
        entry["retry_after"] = r.headers.get("Retry-After")
        try:
            entry["error"] = r.json().get("error")
        except ValueError:
            entry["error"] = r.text[:200]
    rec.add(entry)
    return entry


class Poller(threading.Thread):
    """Polls /health every 0.5 s and samples the worker's VmRSS."""

    def __init__(self, server: common.Server) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.stop_event = threading.Event()
        self.health: list[tuple[float, object]] = []
        self.rss: list[float] = []

    def run(self) -> None:
        http = requests.Session()
        while not self.stop_event.is_set():
            tick = time.perf_counter()
            try:
                r = http.get(self.server.base + "/api/bg/health", timeout=HEALTH_TIMEOUT_S)
                self.health.append((time.perf_counter() - tick, r.status_code))
            except requests.RequestException as exc:
                self.health.append((time.perf_counter() - tick, type(exc).__name__))
            rss = common.proc_mb(self.server.worker, "VmRSS") if self.server.worker else None
            if rss is not None:
                self.rss.append(rss)
            self.stop_event.wait(max(0.0, 0.5 - (time.perf_counter() - tick)))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def folder_listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else ["<missing>"]


def run(args: argparse.Namespace) -> dict:
    photos = photos_1024()
    server = common.service_server("load", args.model, args.model_dir, args.threads)
    rec = Recorder()
    result: dict = {"model": args.model, "mode": "sequential" if args.sequential else "concurrent",
                    "loadavg_before": common.loadavg(), "notes": []}
    print(f"starting gunicorn {' '.join(server.argv[1:])} BG_MODEL={args.model} (port {server.port}) ...",
          file=sys.stderr, flush=True)
    server.start()
    poller = Poller(server)
    try:
        http = requests.Session()
        warm = upload(http, server.base, photos[0], Recorder())
        result["warmup_s"] = round(warm["seconds"], 3)
        result["warmup_status"] = warm["status"]
        result["rss_after_warmup_mb"] = common.proc_mb(server.worker, "VmRSS")
        poller.start()
        started = time.perf_counter()
        if args.sequential:
            for i in range(args.sequential):
                upload(http, server.base, photos[i % len(photos)], rec)
                if i == 9:
                    result["rss_after_10th_mb"] = common.proc_mb(server.worker, "VmRSS")
            result["rss_after_last_mb"] = common.proc_mb(server.worker, "VmRSS")
        else:
            deadline = started + args.seconds

            def client(index: int) -> None:
                session = requests.Session()
                i = index
                while time.perf_counter() < deadline:
                    entry = upload(session, server.base, photos[i % len(photos)], rec)
                    i += 1
                    if entry["status"] == 503:
                        try:
                            pause = float(entry.get("retry_after") or 1)
                        except ValueError:
                            pause = 1.0
                        time.sleep(max(0.0, min(pause, 2.0, deadline - time.perf_counter())))

            threads = [threading.Thread(target=client, args=(c,), daemon=True) for c in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(args.seconds + CLIENT_TIMEOUT_S + 30)
        elapsed = time.perf_counter() - started
        poller.stop_event.set()
        poller.join(HEALTH_TIMEOUT_S + 5)
        server.check_worker()
        result["memory_after_load"] = server.memory()
        result["worker_hwm_mb"] = result["memory_after_load"]["worker_hwm_mb"]
        time.sleep(0.5)
        result["upload_folder_left"] = folder_listing(server.upload_folder)
        result["processed_folder_left"] = folder_listing(server.processed_folder)
        before = common.proc_mb(server.worker, "VmRSS")
        cleared = http.post(server.base + "/api/bg/clear_cache", timeout=60)
        after = common.proc_mb(server.worker, "VmRSS")
        result["clear_cache"] = {"status": cleared.status_code, "rss_before_mb": before, "rss_after_mb": after,
                                 "response": cleared.json() if cleared.headers.get("content-type", "").startswith(
                                     "application/json") else cleared.text[:200]}
        again = upload(http, server.base, photos[0], Recorder())
        result["clear_cache"]["upload_after_status"] = again["status"]
        result["clear_cache"]["upload_after_s"] = round(again["seconds"], 3)
        result["clear_cache"]["rss_after_reload_mb"] = common.proc_mb(server.worker, "VmRSS")
        result["worker_hwm_final_mb"] = common.proc_mb(server.worker, "VmHWM")
        try:
            result["status_after"] = http.get(server.base + "/api/bg/status", timeout=10).json()
        except (requests.RequestException, ValueError) as exc:
            result["notes"].append(f"/status after the run: {exc}")
    finally:
        poller.stop_event.set()
        server.stop()
    result["notes"] += server.notes
    result["server_log"] = str(server.log_path)
    result["loadavg_after"] = common.loadavg()

    codes = Counter(str(e["status"]) for e in rec.requests)
    ok = [e["seconds"] for e in rec.requests if e["status"] == 200]
    every = [e["seconds"] for e in rec.requests]
    health_lat = [h[0] for h in poller.health]
    result.update(
        elapsed_s=round(elapsed, 2),
        requests=len(rec.requests),
        status_counts=dict(sorted(codes.items())),
        ok=len(ok),
        throughput_ok_per_s=round(len(ok) / elapsed, 3) if elapsed else None,
        p50_s=round(percentile(ok, 0.5), 3) if ok else None,
        p95_s=round(percentile(ok, 0.95), 3) if ok else None,
        max_s=round(max(ok), 3) if ok else None,
        p50_all_s=round(percentile(every, 0.5), 3) if every else None,
        server_errors_not_503=sum(1 for e in rec.requests
                                  if isinstance(e["status"], int) and e["status"] >= 500 and e["status"] != 503),
        client_exceptions=sum(1 for e in rec.requests if e["status"] == "exception"),
        bad_images=rec.bad_images,
        health_samples=[[round(h[0] * 1000, 1), h[1]] for h in poller.health],
        health_polls=len(poller.health),
        health_failures=sum(1 for h in poller.health if h[1] != 200),
        health_p50_ms=round(percentile(health_lat, 0.5) * 1000, 1) if health_lat else None,
        health_max_ms=round(max(health_lat) * 1000, 1) if health_lat else None,
        sampled_rss_max_mb=max(poller.rss) if poller.rss else None,
        errors_503_sample=sorted({str(e.get("error")) for e in rec.requests if e["status"] == 503})[:3],
    )
    return result


def fmt(v, digits=3) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table(r: dict, args: argparse.Namespace) -> str:
    shape = f"sequential {args.sequential}" if args.sequential else f"{args.clients} clients x {args.seconds} s"
    rows = [
        ("model / mode", f"{r['model']} / {shape}"),
        ("requests (timed)", r["requests"]),
        ("status codes", ", ".join(f"{k}: {v}" for k, v in r["status_counts"].items())),
        ("5xx other than 503", r["server_errors_not_503"]),
        ("client exceptions (timeouts, resets)", r["client_exceptions"]),
        ("200s decoded as RGBA PNG of the right size", f"{r['ok'] - len(r['bad_images'])} / {r['ok']}"),
        ("throughput (200s per s)", fmt(r["throughput_ok_per_s"])),
        ("latency p50 / p95 / max of 200s (s)", f"{fmt(r['p50_s'])} / {fmt(r['p95_s'])} / {fmt(r['max_s'])}"),
        ("warm-up (first) request (s)", fmt(r.get("warmup_s"))),
        ("worker peak RSS, VmHWM (MB)", fmt(r["worker_hwm_mb"], 1)),
        ("master VmHWM (MB)", fmt(r["memory_after_load"]["master_hwm_mb"], 1)),
        ("health polls / failures", f"{r['health_polls']} / {r['health_failures']}"),
        ("health latency p50 / max (ms)", f"{fmt(r['health_p50_ms'], 1)} / {fmt(r['health_max_ms'], 1)}"),
    ]
    rows.append(("worker VmRSS after 10th / after last (MB), sequential only",
                 f"{fmt(r.get('rss_after_10th_mb'), 1)} / {fmt(r.get('rss_after_last_mb'), 1)}"))
    cc = r.get("clear_cache", {})
    freed = cc.get("response", {}).get("freed_mb") if isinstance(cc.get("response"), dict) else None
    rows += [
        ("UPLOAD_FOLDER / PROCESSED_FOLDER empty after",
         f"{'yes' if not r['upload_folder_left'] else r['upload_folder_left']} / "
         f"{'yes' if not r['processed_folder_left'] else r['processed_folder_left']}"),
        ("clear_cache: VmRSS before -> after (MB), freed_mb reported",
         f"{fmt(cc.get('rss_before_mb'), 1)} -> {fmt(cc.get('rss_after_mb'), 1)}, {fmt(freed, 1)} (HTTP {cc.get('status')})"),
        ("upload after clear_cache: status, s, VmRSS (MB)",
         f"{cc.get('upload_after_status')}, {fmt(cc.get('upload_after_s'))}, {fmt(cc.get('rss_after_reload_mb'), 1)}"),
        ("load average before -> after", f"{r['loadavg_before']} -> {r['loadavg_after']}"),
    ]
    lines = ["| measure | value |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=("u2netp", "isnet-general-tiny", "isnet-general-use"))
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--sequential", type=int, default=0, metavar="N", help="N sequential uploads instead")
    parser.add_argument("--threads", type=int, default=None, help="ORT_THREADS (default: the service's, 1)")
    parser.add_argument("--model-dir", type=Path, default=common.DEFAULT_MODEL_DIR)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not 1 <= args.clients <= 64 or not 0 < args.seconds <= 600 or not 0 <= args.sequential <= 2000:
        parser.error("keep it bounded: 1-64 clients, up to 600 s, up to 2000 sequential uploads")
    if args.model == "isnet-general-tiny" and common.tiny_model(args.model_dir) is None:
        print(f"SKIPPED: {args.model_dir}/isnet-general-tiny.onnx (+ .sha256) does not exist; build it with "
              f"MODEL_DIR={args.model_dir} .venv/bin/flask --app app_isnet_tiny prepare-model isnet-general-tiny "
              f"--source ../shared/models/isnet-general-use.fp16.onnx")
        return 2
    if args.model == "isnet-general-use" and not (args.model_dir / "isnet-general-use.onnx").is_file():
        print(f"SKIPPED: {args.model_dir}/isnet-general-use.onnx is absent and this bench never downloads")
        return 2
    info = common.machine()
    cmd = common.command_line()
    r = run(args)
    r["gunicorn_env"] = {k: os.environ[k] for k in ("GUNICORN_THREADS", "WEB_CONCURRENCY") if k in os.environ}
    print(f"Machine: nproc {info['nproc']}, {info['cpu']}, onnxruntime {info['onnxruntime']}, "
          f"Python {info['python']}; code: {info['git']}")
    print(f"Command: `{cmd}`")
    threads = os.environ.get("GUNICORN_THREADS", "gunicorn.conf.py default")
    print("Server: `gunicorn -c gunicorn.conf.py app_isnet_tiny:app` "
          f"({os.environ.get('WEB_CONCURRENCY', '1')} worker, gunicorn.conf.py's worker class, {threads} threads), BG_MODEL={args.model}, ORT_THREADS={args.threads or 'default (1)'}\n")
    print(table(r, args))
    for line in r["notes"] + [f"bad image: {b}" for b in r["bad_images"]]:
        print(f"- {line}")
    if r["errors_503_sample"]:
        print(f"- 503 messages: {r['errors_503_sample']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "command": cmd, "result": r}, indent=2, default=str))
    failed = r["server_errors_not_503"] or r["bad_images"] or r["upload_folder_left"] or r["processed_folder_left"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
