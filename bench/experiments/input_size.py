"""isnet-general-tiny at a smaller input size: fidelity against fp32 IS-Net fixture masks, and time.

    python bench/experiments/input_size.py MODEL.onnx SIZE [THREADS]

The graph's Resize target sizes are constants traced at 1024 px; they are rescaled with the input.
"""

import sys, time, statistics
import numpy as np, onnx, onnxruntime as ort
from PIL import Image
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "bench"))
import common
from app import imaging, model_io
from app.services.model_store import CATALOGUE
src, size = sys.argv[1], int(sys.argv[2])
m = onnx.load(src)
dims = m.graph.input[0].type.tensor_type.shape.dim
dims[2].dim_value = size; dims[3].dim_value = size
del m.graph.value_info[:]
from onnx import numpy_helper
import math
users = {}
for n in m.graph.node:
    for i in n.input: users.setdefault(i, []).append(n)
changed = 0
for n in m.graph.node:
    if n.op_type == "Constant":
        v = numpy_helper.to_array(n.attribute[0].t)
        if v.dtype == np.int64 and v.shape == (2,) and all(u.op_type == "Concat" for u in users.get(n.output[0], [])) and v[0] == v[1] and v[0] >= 2:
            nv = np.array([math.ceil(int(x) * size / 1024) for x in v], dtype=np.int64)
            n.attribute[0].t.CopyFrom(numpy_helper.from_array(nv, n.attribute[0].t.name)); changed += 1
print("resize size constants changed:", changed)
for o in m.graph.output:
    for d in o.type.tensor_type.shape.dim[2:]: d.ClearField("dim_value")
o = ort.SessionOptions(); o.intra_op_num_threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
s = ort.InferenceSession(m.SerializeToString(), o, providers=["CPUExecutionProvider"])
spec = CATALOGUE["isnet-general-tiny"]
ious, times = [], []
for photo in common.fixture_images():
    im = Image.open(photo); im.load(); from PIL import ImageOps; im = ImageOps.exif_transpose(im).convert("RGB")
    out_size = imaging.scaled_size(im.size, 1024)
    x = model_io.model_input(im.resize((size, size), Image.Resampling.LANCZOS), spec.mean, spec.std)
    t = time.perf_counter(); y = s.run(None, x if isinstance(x, dict) else {s.get_inputs()[0].name: x})[0]; times.append(time.perf_counter() - t)
    mask = model_io.mask_from_output(np.asarray(y), out_size)
    iou, mae = common.score(mask, common.reference_mask(photo, "isnet-general-tiny"))
    ious.append(iou); print(photo.name, round(iou, 4), round(times[-1], 3), flush=True)
print(f"size {size}: IoU mean {statistics.mean(ious):.4f} min {min(ious):.4f}, median infer {statistics.median(times):.3f} s")
