"""Latency, peak memory and mask quality of the real service, next to a baseline measured in the same run.

    .venv/bin/python bench/run.py --model u2netp [--runs 3] [--threads 1] [--baseline naive|fp32|none] [--json OUT]

For each server (ours, then the baseline), in a FRESH process each (peak RSS is per process lifetime):
start it with the production command (`gunicorn -c gunicorn.conf.py app_isnet_tiny:app`; the naive
baseline is bench/naive_server.py under the same gunicorn.conf.py), wait for /api/bg/health, send one
warm-up upload (reported as the first-request latency: it includes loading the model), then upload each
fixture photo --runs times, sequentially, with `requests`. Reported:

* median latency over all timed uploads (wall time of the HTTP round trip on loopback);
* peak RSS = VmHWM of the gunicorn WORKER (the child of the master) read from /proc/PID/status after
  the last upload, plus the master's VmHWM for reference;
* IoU of (alpha > 127) and MAE/255 of each response's alpha against the reference mask
  (NAME.u2netp.png for u2netp, NAME.isnet.png for the IS-Net models), resized bilinearly to the output size.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

MODELS = ("u2netp", "isnet-general-tiny", "isnet-general-use")


def measure(server: common.Server, model: str, runs: int, photos: list[Path]) -> dict:
    """Warm-up plus runs x photos sequential uploads against a started server; stops it afterwards."""
    uploads = {p: p.read_bytes() for p in photos}
    http = requests.Session()
    result: dict = {"label": server.label, "ready_s": server.ready_s, "errors": [], "per_image": {}}

    def post(photo: Path) -> tuple[float, requests.Response]:
        started = time.perf_counter()
        r = http.post(server.base + "/api/bg/remove", files={"file": (photo.name, uploads[photo])}, timeout=300)
        return time.perf_counter() - started, r

    try:
        first_s, r = post(photos[0])
        result["first_request_s"] = round(first_s, 3)
        if r.status_code != 200:
            result["errors"].append(f"warm-up {photos[0].name}: HTTP {r.status_code} {r.text[:200]}")
        latencies: list[float] = []
        for _ in range(runs):
            for photo in photos:
                seconds, r = post(photo)
                entry = result["per_image"].setdefault(photo.name, {"latencies_s": []})
                if r.status_code != 200:
                    result["errors"].append(f"{photo.name}: HTTP {r.status_code} {r.text[:200]}")
                    continue
                latencies.append(seconds)
                entry["latencies_s"].append(round(seconds, 3))
                alpha = common.decode_png_alpha(r.content)
                entry["size"] = list(alpha.size)
                ref = common.reference_mask(photo, model)
                if ref is not None:
                    entry["iou"], entry["mae"] = (round(v, 5) for v in common.score(alpha, ref))
        server.check_worker()
        result.update(server.memory())
        if server.label.startswith("ours") or server.label.startswith("fp32"):
            try:
                status = http.get(server.base + "/api/bg/status", timeout=10).json()
                result["status_memory"] = status.get("memory")
                result["model_info"] = status.get("model_info")
            except (requests.RequestException, ValueError) as exc:
                result["errors"].append(f"/status: {exc}")
    finally:
        server.stop()
    result["notes"] = server.notes
    result["log"] = str(server.log_path)
    result["uploads"] = len(latencies)
    if latencies:
        result["median_s"] = round(statistics.median(latencies), 3)
        result["min_s"] = round(min(latencies), 3)
        result["max_s"] = round(max(latencies), 3)
    ious = [e["iou"] for e in result["per_image"].values() if "iou" in e]
    maes = [e["mae"] for e in result["per_image"].values() if "mae" in e]
    if ious:
        result["iou_mean"] = round(statistics.mean(ious), 4)
        result["iou_min"] = round(min(ious), 4)
        result["mae_mean"] = round(statistics.mean(maes), 4)
        result["scored_images"] = len(ious)
    return result


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> str:
    head = ("| server | model | first request (s) | median latency (s) | min-max (s) | worker peak RSS, VmHWM (MB) "
            "| master VmHWM (MB) | IoU mean | IoU min | MAE mean | uploads | errors |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in rows:
        lines.append(
            f"| {r['label']} | {r['model']} | {fmt(r.get('first_request_s'), 2)} | {fmt(r.get('median_s'))} "
            f"| {fmt(r.get('min_s'), 2)}-{fmt(r.get('max_s'), 2)} | {fmt(r.get('worker_hwm_mb'), 1)} "
            f"| {fmt(r.get('master_hwm_mb'), 1)} | {fmt(r.get('iou_mean'), 4)} | {fmt(r.get('iou_min'), 4)} "
            f"| {fmt(r.get('mae_mean'), 4)} | {r.get('uploads', 0)} | {len(r['errors'])} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="ORT_THREADS for our service (default: its own, 1)")
    parser.add_argument("--baseline", choices=("naive", "fp32", "none"), default="naive")
    parser.add_argument("--model-dir", type=Path, default=common.DEFAULT_MODEL_DIR,
                        help="MODEL_DIR for the servers (isnet-general-tiny.onnx is looked for here)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    args.model_dir.mkdir(parents=True, exist_ok=True)

    photos = common.fixture_images()
    if common.reference_mask(photos[0], args.model) is None:
        print(f"note: no reference masks for {args.model} in {common.fixture_dirs()[1]}; quality is not scored",
              file=sys.stderr)
    if args.model == "isnet-general-tiny" and common.tiny_model(args.model_dir) is None:
        print(f"SKIPPED: {args.model_dir}/isnet-general-tiny.onnx (+ .sha256) does not exist. Build it with\n"
              f"  MODEL_DIR={args.model_dir} .venv/bin/flask --app app_isnet_tiny prepare-model isnet-general-tiny "
              f"--source ../shared/models/isnet-general-use.fp16.onnx")
        return 2
    model_path = {
        "u2netp": common.bundled_u2netp,
        "isnet-general-tiny": lambda: common.tiny_model(args.model_dir),
        "isnet-general-use": lambda: common.fp32_model(args.model_dir),
    }[args.model]

    plan: list[tuple[str, str, common.Server]] = []
    if args.model == "isnet-general-use":  # ours on the local fp32 file, never a download
        plan.append(("ours", args.model, common.service_server("ours", args.model, args.model_dir, args.threads,
                                                                model_path())))
    else:
        plan.append(("ours", args.model, common.service_server("ours", args.model, args.model_dir, args.threads)))
    if args.baseline == "naive":
        plan.append(("naive", args.model, common.naive_server("naive", args.model, model_path(), None)))
    elif args.baseline == "fp32":
        fp32 = common.fp32_model(args.model_dir)
        plan.append(("fp32 (ours, BG_MODEL=isnet-general-use)", "isnet-general-use",
                     common.service_server("fp32", "isnet-general-use", args.model_dir, args.threads, fp32)))

    info = common.machine()
    cmd = common.command_line()
    rows = []
    for label, model, server in plan:
        print(f"[{label}] starting {' '.join(server.argv[1:])} (port {server.port}) ...", file=sys.stderr, flush=True)
        load_before = common.loadavg()
        try:
            server.start()
        except RuntimeError as exc:
            rows.append({"label": label, "model": model, "errors": [str(exc)], "notes": []})
            print(f"[{label}] failed to start: {exc}", file=sys.stderr, flush=True)
            continue
        row = measure(server, model, args.runs, photos)
        row.update(label=label, model=model, loadavg_before=load_before, loadavg_after=common.loadavg(),
                   server_command=" ".join(["gunicorn", *server.argv[1:]]),
                   env={k: server.env[k] for k in ("BG_MODEL", "MODEL_DIR", "MODEL_PATH", "ORT_THREADS",
                                                     "NAIVE_MODEL", "NAIVE_MODEL_PATH") if k in server.env})
        rows.append(row)
        print(f"[{label}] done: median {row.get('median_s')} s, worker VmHWM {row.get('worker_hwm_mb')} MB, "
              f"errors {len(row['errors'])}", file=sys.stderr, flush=True)

    print(f"Machine: nproc {info['nproc']}, {info['cpu']}, onnxruntime {info['onnxruntime']}, "
          f"Python {info['python']}; code: {info['git']}; load average (1/5/15 min) at start {info['loadavg_1_5_15']}")
    print(f"Command: `{cmd}`")
    print(f"Photos: {len(photos)} fixtures x {args.runs} runs, sequential, after 1 warm-up upload "
          f"({photos[0].name}); references: {'u2netp' if args.model == 'u2netp' else 'isnet'} masks\n")
    print(table(rows))
    for r in rows:
        for line in r["errors"] + r["notes"]:
            print(f"- {r['label']}: {line}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "command": cmd, "runs": args.runs,
                                         "photos": [p.name for p in photos], "results": rows}, indent=2))
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
