"""How close does an int8 model run to what onnxruntime's int8 kernels can do on this CPU?

    .venv/bin/python bench/int8_peak.py [--model MODEL_DIR/isnet-general-tiny.onnx] [--threads 1,2] [--runs 7]

1. Peak: tiny ONNX graphs of one large int8 operator each (QLinearConv 3x3 and 1x1, u8 activations and
   per-channel s8 weights as the model build makes them; MatMulInteger u8 x s8), and one fp32 Conv 3x3 for
   scale, each in the service's own session (create_session: ORT_ENABLE_ALL, arena off) at 1 and 2
   threads. Median of --runs after one warm-up; GMAC/s = multiply-accumulates / median seconds.
2. The model: the same session on --model (the deployed threads, 2 on a 2-vCPU replica, and 1), a
   random input of the model's size; whole-inference GMAC/s = the Conv MACs of the graph / median seconds,
   as a fraction of the best int8 peak at the same thread count. Kernels and model run in alternation,
   round by round, so both see the same machine load.
3. Op by op: onnxruntime's profiler on one further run of that session: kernel time per operator type,
   and for the Conv kinds their MACs (from the profiled shapes) and GMAC/s, so the time that does no
   multiply-accumulate (Resize, Concat, Quantize/DequantizeLinear, MaxPool, Add, Sigmoid) shows as such.
The process runs with the Dockerfile's malloc settings (tune_malloc; set MALLOC_ARENA_MAX=2 and
GLIBC_TUNABLES=glibc.malloc.hugetlb=1 in the environment as the image does). Run under flock /tmp/bench.lock.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402

from app.heap import tune_malloc  # noqa: E402
from app.services.isnet_tiny_service import create_session  # noqa: E402

CONV_KINDS = {"Conv", "FusedConv", "QLinearConv", "ConvInteger", "NchwcConv"}
# onnxruntime names a fused or re-laid-out node after the graph's node, plus a `_token_N` suffix.
PROFILED_NODE = re.compile(r"^(.*?)(?:_token_\d+)?_kernel_time$")


def qlinear_conv(cin: int, cout: int, size: int, kernel: int) -> tuple[onnx.ModelProto, int]:
    """u8 [1, cin, size, size] -> QLinearConv (s8 per-channel weights, int32 bias) -> u8."""
    rng = np.random.default_rng(0)
    pad = kernel // 2
    inits = [
        numpy_helper.from_array(rng.integers(-127, 128, (cout, cin, kernel, kernel), dtype=np.int8), "w"),
        numpy_helper.from_array(np.full(cout, 0.01, np.float32), "w_scale"),
        numpy_helper.from_array(np.zeros(cout, np.int8), "w_zero"),
        numpy_helper.from_array(np.array(0.02, np.float32), "x_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "x_zero"),
        numpy_helper.from_array(np.array(0.5, np.float32), "y_scale"),
        numpy_helper.from_array(np.array(0, np.uint8), "y_zero"),
        numpy_helper.from_array(rng.integers(-1000, 1000, cout, dtype=np.int32), "bias"),
    ]
    node = helper.make_node("QLinearConv", ["x", "x_scale", "x_zero", "w", "w_scale", "w_zero", "y_scale", "y_zero", "bias"],
                            ["y"], kernel_shape=[kernel, kernel], pads=[pad] * 4)
    graph = helper.make_graph([node], "qlinearconv", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, cin, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, cout, size, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), cout * cin * kernel * kernel * size * size


def float_conv(cin: int, cout: int, size: int, kernel: int) -> tuple[onnx.ModelProto, int]:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((cout, cin, kernel, kernel), dtype=np.float32) * 0.05, "w")]
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[kernel, kernel], pads=[kernel // 2] * 4)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, size, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, size, size])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), cout * cin * kernel * kernel * size * size


def matmul_integer(m: int, k: int, n: int) -> tuple[onnx.ModelProto, int]:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "b"),
             numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
             numpy_helper.from_array(np.array(0, np.int8), "b_zero")]
    node = helper.make_node("MatMulInteger", ["a", "b", "a_zero", "b_zero"], ["y"])
    graph = helper.make_graph([node], "matmulinteger", [helper.make_tensor_value_info("a", TensorProto.UINT8, [m, k])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [m, n])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), m * k * n


KERNELS = {
    "QLinearConv 3x3, 256->256 ch, 64x64": lambda: qlinear_conv(256, 256, 64, 3),
    "QLinearConv 3x3, 64->64 ch, 256x256": lambda: qlinear_conv(64, 64, 256, 3),
    "QLinearConv 1x1, 512->512 ch, 64x64": lambda: qlinear_conv(512, 512, 64, 1),
    "MatMulInteger 2048x2048x2048": lambda: matmul_integer(2048, 2048, 2048),
    "fp32 Conv 3x3, 256->256 ch, 64x64 (for scale)": lambda: float_conv(256, 256, 64, 3),
}


def feed_for(session) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {}
    for item in session.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in item.shape]
        if item.type == "tensor(uint8)":
            feeds[item.name] = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
            feeds[item.name] = rng.random(shape, dtype=np.float32)
    return feeds


def interleaved(sessions: dict[str, object], runs: int) -> dict[str, float]:
    """Median seconds per session over `runs` rounds, each round running every session once (after a
    warm-up each), so the peak kernels and the model see the same machine load."""
    feeds = {label: feed_for(session) for label, session in sessions.items()}
    outputs = {label: [session.get_outputs()[0].name] for label, session in sessions.items()}
    for label, session in sessions.items():
        session.run(outputs[label], feeds[label])
    times: dict[str, list[float]] = {label: [] for label in sessions}
    for _ in range(runs):
        for label, session in sessions.items():
            started = time.perf_counter()
            session.run(outputs[label], feeds[label])
            times[label].append(time.perf_counter() - started)
    return {label: statistics.median(values) for label, values in times.items()}


def conv_macs(weight_shape: list[int], output_shape: list[int]) -> int:
    """MACs of one Conv: every output element sums Cin/group x kh x kw products."""
    return int(np.prod(output_shape)) * int(np.prod(weight_shape[1:]))


def model_macs(path: Path) -> dict[str, int]:
    """MACs of each Conv of a (QDQ or float) graph by node name, from ONNX shape inference."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    shapes = {vi.name: [d.dim_value for d in vi.type.tensor_type.shape.dim]
              for vi in [*model.graph.value_info, *model.graph.output, *model.graph.input]}
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    producers = {o: n for n in model.graph.node for o in n.output}
    macs = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        weight = node.input[1]
        if weight not in shapes and weight in producers:  # QDQ: the weight comes through a DequantizeLinear
            weight = producers[weight].input[0]
        macs[node.name] = conv_macs(shapes[weight], shapes[node.output[0]])
    return macs


def profile(path: Path, threads: int) -> list[dict]:
    """Kernel events of the second run of the deployed session (the first one warms up)."""
    with tempfile.TemporaryDirectory(prefix="int8-peak-") as tmp:
        session = create_session(str(path), threads, False, profile_prefix=str(Path(tmp) / "profile"))
        feeds = feed_for(session)
        outputs = [session.get_outputs()[0].name]
        session.run(outputs, feeds)
        session.run(outputs, feeds)
        events = json.loads(Path(session.end_profiling()).read_text())
    runs = [e for e in events if e.get("name") == "model_run"]
    last = runs[-1]["ts"]
    return [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last]


def op_table(events: list[dict], macs: dict[str, int], peak: float) -> list[dict]:
    """Kernel time per operator type; Conv kinds with their MACs (prepacked weights are not in the profile,
    so each profiled Conv is matched to the graph's node by name)."""
    by_op: dict[str, dict] = defaultdict(lambda: {"us": 0, "macs": 0, "count": 0})
    for event in events:
        op = event["args"]["op_name"]
        row = by_op[op]
        row["us"] += event["dur"]
        row["count"] += 1
        if op in CONV_KINDS:
            match = PROFILED_NODE.match(event["name"])
            row["macs"] += macs.get(match.group(1), 0) if match else 0
    total = sum(r["us"] for r in by_op.values())
    rows = []
    for op, row in sorted(by_op.items(), key=lambda item: -item[1]["us"]):
        gmacs = row["macs"] / (row["us"] * 1e-6) / 1e9 if row["macs"] and row["us"] else None
        rows.append({"op": op, "nodes": row["count"], "ms": row["us"] / 1000, "share": row["us"] / total,
                     "gmac": row["macs"] / 1e9, "gmac_per_s": gmacs, "of_peak": gmacs / peak if gmacs else None})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_model = Path(os.environ.get("MODEL_DIR", common.DEFAULT_MODEL_DIR)) / "isnet-general-tiny.onnx"
    parser.add_argument("--model", type=Path, default=default_model)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    tune_malloc()
    threads = [int(t) for t in args.threads.split(",")]
    info = common.machine()
    print(f"machine: {info['cpu']}, nproc {info['nproc']}, onnxruntime {info['onnxruntime']}; "
          f"load average {common.loadavg()}\ncommand: {common.command_line()}\n", flush=True)

    result: dict[str, object] = {"machine": info, "command": common.command_line(), "peak": {}, "model": {}}
    per_node = model_macs(args.model) if args.model.is_file() else {}
    macs = sum(per_node.values())
    with tempfile.TemporaryDirectory(prefix="int8-peak-") as tmp:
        graphs = {}
        for label, make in KERNELS.items():
            model, kernel_macs = make()
            path = Path(tmp) / f"kernel{len(graphs)}.onnx"
            onnx.save(model, str(path))
            graphs[label] = (path, kernel_macs)
        if per_node:
            graphs[args.model.name] = (args.model, macs)
        seconds = {t: interleaved({label: create_session(str(path), t, False) for label, (path, _) in graphs.items()},
                                  args.runs) for t in threads}
    best = {t: max(graphs[label][1] / seconds[t][label] for label in KERNELS if not label.startswith("fp32")) / 1e9
            for t in threads}
    print("| kernel | MMAC | " + " | ".join(f"{t} thread(s): ms, GMAC/s" for t in threads) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in threads) + " |")
    for label, (_, kernel_macs) in graphs.items():
        cells = []
        for t in threads:
            rate = kernel_macs / seconds[t][label] / 1e9
            result["peak"].setdefault(label, {})[t] = {"s": seconds[t][label], "gmac_per_s": rate}
            cells.append(f"{seconds[t][label] * 1000:.1f} ms, {rate:.0f}")
        print(f"| {label} | {kernel_macs / 1e6:.0f} | " + " | ".join(cells) + " |")
    print("\nint8 practical peak (best of the int8 kernels): "
          + ", ".join(f"{t} thread(s) {best[t]:.0f} GMAC/s" for t in threads))
    if not per_node:
        print(f"\nSKIPPED the model part: {args.model} does not exist")
        return 0
    print(f"\n{args.model.name}: {macs / 1e9:.1f} GMAC in its Convs")
    for t in threads:
        rate = macs / seconds[t][args.model.name] / 1e9
        result["model"][t] = {"s": seconds[t][args.model.name], "gmac_per_s": rate, "of_peak": rate / best[t]}
        print(f"- {t} thread(s): inference median {seconds[t][args.model.name]:.3f} s, {rate:.1f} GMAC/s = "
              f"{rate / best[t]:.0%} of the int8 peak", flush=True)
    for t in threads:
        rows = op_table(profile(args.model, t), per_node, best[t])
        result["model"][t]["ops"] = rows
        print(f"\n| op ({t} thread(s), profiler kernel time) | nodes | ms | share | GMAC | GMAC/s | of peak |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for row in rows[:14]:
            rate_cell = f"{row['gmac_per_s']:.0f}" if row["gmac_per_s"] else "-"
            peak_cell = f"{row['of_peak']:.0%}" if row["of_peak"] else "-"
            print(f"| {row['op']} | {row['nodes']} | {row['ms']:.1f} | {row['share']:.1%} | {row['gmac']:.2f} | "
                  f"{rate_cell} | {peak_cell} |")
        print()
    print(f"load average at the end {common.loadavg()}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
