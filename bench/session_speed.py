"""Inference time and peak RSS per onnxruntime session variant: each variant a fresh child, rounds interleaved.

    python bench/session_speed.py VARIANTS.json [ROUNDS]

VARIANTS.json maps a label to {"model": path, "threads": 1, "arena": false, "reuse": false,
"pattern": false, "nchwc": false, "shrink": false (arena shrinkage run option), "thp": false
(GLIBC_TUNABLES=glibc.malloc.hugetlb=1 for the child), "tune": true (the service's tune_malloc),
"envarena": null | 0 | 1 (a shared env arena, 1 = kSameAsRequested), "config": {session config entries},
"runs": 3, "sleep": 0 (seconds idle before each run, as a server between requests)}. Reported: median of runs 2.. over all rounds, max VmHWM, RSS after the session.
See bench/variants/ for the files behind bench/README.md's issue-9 tables; their model paths use
$MODEL_DIR (the uint8-Resize build), $OLD_MODEL_DIR (the 8a267de9 build) and $U2NETP (the bundled file).
"""
import json, os, subprocess, sys, statistics
from pathlib import Path
ROOT = str(Path(__file__).resolve().parents[1])
CHILD = r'''
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[2])
import onnxruntime as ort
from app.heap import tune_malloc
from app.services.isnet_tiny_service import peak_rss_mb, rss_mb
v = json.loads(sys.argv[1])
if v.get("tune", True): tune_malloc()
o = ort.SessionOptions()
o.intra_op_num_threads = v.get("threads", 1)
o.inter_op_num_threads = 1
o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
o.enable_cpu_mem_arena = v.get("arena", False)
o.enable_mem_pattern = v.get("pattern", False)
o.enable_mem_reuse = v.get("reuse", False)
for k, val in v.get("config", {}).items(): o.add_session_config_entry(k, val)
if v.get("envarena") is not None:
    cfg = ort.OrtArenaCfg(0, v["envarena"], -1, -1)
    mi = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(mi, cfg)
    o.add_session_config_entry("session.use_env_allocators", "1")
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession(v["model"], o, providers=["CPUExecutionProvider"], disabled_optimizers=[] if v.get("nchwc") else ["NchwcTransformer"])
size = s.get_inputs()[0].shape[-1]
feed = {s.get_inputs()[0].name: np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)}
ro = None
if v.get("shrink"):
    ro = ort.RunOptions(); ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
after = rss_mb(); times = []
for _ in range(v.get("runs", 3)):
    time.sleep(v.get("sleep", 0))
    t = time.perf_counter(); s.run([s.get_outputs()[0].name], feed, ro); times.append(time.perf_counter() - t)
print(json.dumps({"session_mb": round(after), "peak_mb": round(peak_rss_mb()), "end_mb": round(rss_mb()), "times": [round(x, 3) for x in times]}))
'''
def run(v):
    v = {**v, "model": os.path.expandvars(v["model"])}  # $MODEL_DIR, $OLD_MODEL_DIR, $U2NETP in the files
    env = dict(os.environ)
    env.pop("GLIBC_TUNABLES", None)
    if v.get("thp"): env["GLIBC_TUNABLES"] = "glibc.malloc.hugetlb=1"
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps(v), ROOT], capture_output=True, text=True, env=env)
    if out.returncode: print(out.stderr[-2000:]); raise SystemExit(1)
    return json.loads(out.stdout.strip().splitlines()[-1])
variants = json.loads(open(sys.argv[1]).read())
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 2
res = {name: [] for name in variants}
for r in range(rounds):
    for name, v in variants.items():
        x = run(v); res[name].append(x); print(name, x, flush=True)
print("\n| variant | median s (runs 2..) | peak MB | after-session MB |")
for name, xs in res.items():
    ts = [t for x in xs for t in x["times"][1:]]
    print(f"| {name} | {statistics.median(ts):.3f} ({min(ts):.2f}-{max(ts):.2f}) | {max(x['peak_mb'] for x in xs)} | {xs[0]['session_mb']} |")
