"""Peak memory and latency of one model under different onnxruntime session options, each in a fresh process.

    python bench/experiments/session_options.py                       # bundled u2netp at 320
    python bench/experiments/session_options.py --model /tmp/bench-models/isnet-general-tiny.onnx --runs 3

Each variant runs in its own child process (peak RSS is per process lifetime): import, glibc tuning as
the service does it, create the session, then `--runs` inferences on a random input. Reported: RSS
after the session is created, VmHWM after the runs, the difference (what inference adds) and the
median run time. The first row is the service's own choice (app.services.isnet_tiny_service).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

VARIANTS: dict[str, dict[str, object]] = {
    "service (arena, pattern, reuse off; NCHWc off)": {"arena": False, "pattern": False, "reuse": False, "nchwc": False},
    "reuse on": {"arena": False, "pattern": False, "reuse": True, "nchwc": False},
    "reuse off, NCHWc on": {"arena": False, "pattern": False, "reuse": False, "nchwc": True},
    "reuse on, NCHWc on": {"arena": False, "pattern": False, "reuse": True, "nchwc": True},
    "pattern on": {"arena": False, "pattern": True, "reuse": True, "nchwc": False},
    "arena on": {"arena": True, "pattern": False, "reuse": True, "nchwc": False},
    "onnxruntime defaults": {"arena": True, "pattern": True, "reuse": True, "nchwc": True},
}

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, {root!r})
import onnxruntime as ort
from app.heap import tune_malloc
from app.services.isnet_tiny_service import peak_rss_mb, rss_mb
tune_malloc()
v = json.loads({variant!r})
options = ort.SessionOptions()
options.intra_op_num_threads = {threads}
options.inter_op_num_threads = 1
options.enable_cpu_mem_arena = v["arena"]
options.enable_mem_pattern = v["pattern"]
options.enable_mem_reuse = v["reuse"]
options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
session = ort.InferenceSession({model!r}, options, providers=["CPUExecutionProvider"],
                               disabled_optimizers=[] if v["nchwc"] else ["NchwcTransformer"])
size = session.get_inputs()[0].shape[-1]
feed = {{session.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)}}
after_session = rss_mb()
times = []
for _ in range({runs}):
    started = time.perf_counter()
    session.run([session.get_outputs()[0].name], feed)
    times.append(time.perf_counter() - started)
print(json.dumps({{"session_mb": after_session, "peak_mb": peak_rss_mb(), "median_s": sorted(times)[len(times) // 2]}}))
"""


def measure(model: str, variant: dict[str, object], runs: int, threads: int) -> dict[str, float]:
    code = CHILD.format(root=str(ROOT), variant=json.dumps(variant), model=model, runs=runs, threads=threads)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from app.services.model_store import bundled_u2netp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="ONNX file (default: the bundled u2netp)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", help="comma-separated row numbers (1-based) to run, e.g. 1,2")
    args = parser.parse_args()
    rows = list(VARIANTS.items())
    if args.only:
        rows = [rows[int(i) - 1] for i in args.only.split(",")]
    model = args.model or str(bundled_u2netp())
    print(f"model: {model}, {args.runs} runs, intra-op threads {args.threads}\n")
    print("| variant | RSS after session (MB) | peak RSS (MB) | inference adds (MB) | median s |")
    print("| --- | --- | --- | --- | --- |")
    for name, variant in rows:
        result = measure(model, variant, args.runs, args.threads)
        print(f"| {name} | {result['session_mb']:.0f} | {result['peak_mb']:.0f} | "
              f"{result['peak_mb'] - result['session_mb']:.0f} | {result['median_s']:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
