"""onnxruntime per-op-type kernel time of one model (second run, 1 thread, the service's memory-first options).

    python bench/op_profile.py MODEL.onnx
"""
import sys, json, collections, numpy as np, onnxruntime as ort, onnx
o = ort.SessionOptions(); o.intra_op_num_threads = 1; o.enable_profiling = True
o.enable_cpu_mem_arena = False; o.enable_mem_pattern = False; o.enable_mem_reuse = False
o.profile_file_prefix = "/tmp/op_profile"
o.optimized_model_filepath = "/tmp/op_profile.optimised.onnx"
s = ort.InferenceSession(sys.argv[1], o, providers=["CPUExecutionProvider"], disabled_optimizers=["NchwcTransformer"])
size = s.get_inputs()[0].shape[-1]
x = np.random.default_rng(0).random((1, 3, size, size), dtype=np.float32)
s.run(None, {s.get_inputs()[0].name: x}); s.run(None, {s.get_inputs()[0].name: x})
p = s.end_profiling()
ev = json.load(open(p))
import os; os.unlink(p)
runs = [e for e in ev if e.get("name") == "model_run"]
last_start = runs[-1]["ts"]
agg = collections.Counter()
for e in ev:
    if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_start:
        agg[e["args"]["op_name"]] += e["dur"]
tot = sum(agg.values())
print("run ms", runs[-1]["dur"] / 1000, "kernels ms", tot / 1000)
for k, v in agg.most_common(12): print(f"{k:30s} {v/1000:8.1f} ms {100*v/tot:5.1f}%")
m = onnx.load("/tmp/op_profile.optimised.onnx")
print(collections.Counter(n.op_type for n in m.graph.node).most_common())
