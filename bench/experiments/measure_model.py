"""Measure one IS-Net-style ONNX model in a fresh process: peak RSS, latency, mask quality.

Usage (run it as its own process so the peak RSS belongs to this model only):

    python bench/experiments/measure_model.py MODEL.onnx [--images DIR] [--masks DIR] [--json]

Session: CPU EP, intra_op_num_threads=1, enable_cpu_mem_arena=False,
enable_mem_pattern=False, ORT_ENABLE_ALL. The photos are processed in sorted
order; ``peak_rss_1_mb`` is VmHWM right after the first inference (a fresh
process doing one inference), ``peak_rss_all_mb`` after all of them.
Quality: IoU of (alpha > 127) and MAE/255 against ``NAME.isnet.png``
(resized with bilinear to the output size if needed). Latency: wall time of
``session.run`` per photo (pre/post-processing reported separately).
Set MALLOC_* env vars in the parent (e.g. ``MALLOC_MMAP_THRESHOLD_=131072``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_IMAGES = HERE.parents[2] / "shared" / "fixtures" / "images"
DEFAULT_MASKS = HERE.parents[2] / "shared" / "fixtures" / "masks"


def vm_kb(field: str) -> int:
    """A VmXXX field of /proc/self/status, in kB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def preprocess(img, size: tuple[int, int]) -> np.ndarray:
    """IS-Net pre-processing: RGB, LANCZOS, /max, -0.5, /1.0, NCHW float32."""
    from PIL import Image

    h, w = size
    arr = np.asarray(img.convert("RGB").resize((w, h), Image.LANCZOS), dtype=np.float32)
    arr = (arr / max(float(arr.max()), 1.0) - 0.5) / 1.0
    return np.ascontiguousarray(arr.transpose(2, 0, 1)[None], dtype=np.float32)


def postprocess(pred: np.ndarray, size: tuple[int, int]):
    """Output 0 channel 0 -> min-max -> uint8 -> LANCZOS back to the photo size."""
    from PIL import Image

    m = pred[0, 0].astype(np.float32)
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return Image.fromarray((m * 255).astype(np.uint8), mode="L").resize(size, Image.LANCZOS)


def compare(alpha, ref_path: Path) -> tuple[float, float]:
    """IoU of (alpha>127) and MAE/255 against the reference mask.

    The same as common.score, kept here on purpose: common imports requests, which would add to the
    peak RSS this script exists to measure.
    """
    from PIL import Image

    ref = Image.open(ref_path).convert("L")
    if ref.size != alpha.size:
        ref = ref.resize(alpha.size, Image.BILINEAR)
    a = np.asarray(alpha, dtype=np.float32)
    r = np.asarray(ref, dtype=np.float32)
    am, rm = a > 127, r > 127
    union = np.logical_or(am, rm).sum()
    iou = float(np.logical_and(am, rm).sum() / union) if union else 1.0
    return iou, float(np.abs(a - r).mean() / 255.0)


def measure(model: Path, images: Path, masks: Path, trim: bool = False) -> dict:
    """Load the model, run every photo once; return the figures.

    ``trim``: call glibc ``malloc_trim(0)`` after each photo (outside the timed run).
    """
    import onnxruntime as ort
    from PIL import Image, ImageOps

    rss0 = vm_kb("VmRSS")
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.enable_cpu_mem_arena = False
    so.enable_mem_pattern = False
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t = time.perf_counter()
    sess = ort.InferenceSession(str(model), so, providers=["CPUExecutionProvider"])
    load_s = time.perf_counter() - t
    rss_loaded = vm_kb("VmRSS")
    inp = sess.get_inputs()[0]
    size = (int(inp.shape[2]), int(inp.shape[3]))
    out_name = sess.get_outputs()[0].name
    per: dict[str, dict] = {}
    run_s, total_s = [], []
    hwm_first = 0
    for path in sorted(images.glob("*.jpg")):
        t0 = time.perf_counter()
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
        x = preprocess(im, size)
        t1 = time.perf_counter()
        pred = sess.run([out_name], {inp.name: x})[0]
        t2 = time.perf_counter()
        alpha = postprocess(pred, im.size)
        t3 = time.perf_counter()
        if trim:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        if not hwm_first:
            hwm_first = vm_kb("VmHWM")
        run_s.append(t2 - t1)
        total_s.append(t3 - t0)
        ref = masks / f"{path.stem}.isnet.png"
        if ref.is_file():
            iou, mae = compare(alpha, ref)
            per[path.stem] = {"iou": round(iou, 4), "mae": round(mae, 4)}
    ious = [v["iou"] for v in per.values()]
    maes = [v["mae"] for v in per.values()]
    return {
        "model": str(model),
        "loadavg_1m_at_end": round(os.getloadavg()[0], 2),
        "size_mb": round(model.stat().st_size / 1e6, 1),
        "load_s": round(load_s, 2),
        "rss_start_mb": round(rss0 / 1024, 1),
        "rss_loaded_mb": round(rss_loaded / 1024, 1),
        "peak_rss_1_mb": round(hwm_first / 1024, 1),
        "peak_rss_all_mb": round(vm_kb("VmHWM") / 1024, 1),
        "median_run_s": round(statistics.median(run_s), 3),
        "median_total_s": round(statistics.median(total_s), 3),
        "iou_mean": round(float(np.mean(ious)), 4) if ious else None,
        "iou_min": round(float(np.min(ious)), 4) if ious else None,
        "mae_mean": round(float(np.mean(maes)), 4) if maes else None,
        "per_image": per,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", type=Path)
    ap.add_argument("--images", type=Path, default=DEFAULT_IMAGES)
    ap.add_argument("--masks", type=Path, default=DEFAULT_MASKS)
    ap.add_argument("--json", action="store_true", help="print one JSON line only")
    ap.add_argument("--trim", action="store_true", help="glibc malloc_trim(0) after each photo")
    args = ap.parse_args()
    res = measure(args.model, args.images, args.masks, args.trim)
    res["trim"] = args.trim
    print(json.dumps(res) if args.json else json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
