"""The baseline: a minimal Flask + onnxruntime background remover, as people usually write it.

    NAIVE_MODEL=u2netp NAIVE_MODEL_PATH=/path/u2netp.onnx \
        gunicorn -c gunicorn.conf.py --pythonpath bench naive_server:app

Same pre- and post-processing as the service (rembg's: RGB, LANCZOS to the model's input, divide by
the max, mean/std, output 0 channel 0, min-max, x255, LANCZOS back; photos over 1024 px on the long
side are scaled down first, like the service's response size). What makes it naive: DEFAULT
SessionOptions (memory arena, memory patterns, all threads), `session.run(None, ...)` (every output,
as rembg does), the session made at import, full-size decode, no admission control.
"""
from __future__ import annotations

import io
import os

import numpy as np
import onnxruntime as ort
from flask import Flask, jsonify, request, send_file
from PIL import Image, ImageOps

SPECS = {
    "u2netp": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "isnet-general-use": ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
    "isnet-general-tiny": ((0.5, 0.5, 0.5), (1.0, 1.0, 1.0)),
}
MODEL = os.environ.get("NAIVE_MODEL", "u2netp")
MEAN, STD = SPECS[MODEL]
MAX_DIMENSION = 1024

session = ort.InferenceSession(os.environ["NAIVE_MODEL_PATH"], providers=["CPUExecutionProvider"])
INPUT = session.get_inputs()[0]
SIZE = INPUT.shape[-1] if isinstance(INPUT.shape[-1], int) else 1024

app = Flask(__name__)


def remove_background(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image).convert("RGB")
    if max(image.size) > MAX_DIMENSION:
        scale = MAX_DIMENSION / max(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
    x = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.float32)
    x = x / max(float(x.max()), 1e-6)
    x = (x - np.asarray(MEAN, dtype=np.float32)) / np.asarray(STD, dtype=np.float32)
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32)
    pred = session.run(None, {INPUT.name: x})[0][0, 0]
    lo, hi = float(pred.min()), float(pred.max())
    pred = (pred - lo) / (hi - lo) if hi > lo else np.zeros_like(pred)
    mask = Image.fromarray((pred * 255).astype(np.uint8), mode="L").resize(image.size, Image.Resampling.LANCZOS)
    image.putalpha(mask)
    return image


@app.post("/api/bg/remove")
def remove():
    if "file" not in request.files:
        return jsonify({"error": "no file"}), 400
    try:
        image = Image.open(io.BytesIO(request.files["file"].read()))
        image.load()
    except Exception as exc:  # naive on purpose
        return jsonify({"error": str(exc)}), 400
    out = io.BytesIO()
    remove_background(image).save(out, format="PNG", compress_level=6)
    out.seek(0)
    return send_file(out, mimetype="image/png")


@app.get("/api/bg/health")
def health():
    return jsonify({"status": "healthy"})
