"""Per-tensor quantisation error analysis of a QDQ IS-Net against its fp32 source.

    python bench/experiments/sensitivity.py --fp32 /tmp/sweep/fp32.onnx --qdq /tmp/sweep/all-int8.onnx --out /tmp/sweep/sens.json

Uses onnxruntime.quantization.qdq_loss_debug on ONE calibration image (not an
evaluation photo). For each quantised activation it reports
  qdq_sqnr   : SQNR (dB) of that tensor's own quantise/dequantise step (local noise),
  xmodel_sqnr: SQNR (dB) of the QDQ model's tensor vs the fp32 model's (accumulated),
  drop       : how much xmodel SQNR falls from the node's inputs to its output,
and prints the worst tensors; nodes with low qdq_sqnr or a big drop are the
candidates to keep in float.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app.services.model_build import ImageCalibrationReader, calibration_images, input_name, input_size  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fp32", type=Path, required=True)
    ap.add_argument("--qdq", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--image", type=int, default=0, help="index into the calibration images")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        create_activation_matching,
        modify_model_output_intermediate_tensors,
    )

    fm = onnx.load(str(args.fp32), load_external_data=False)
    img = [calibration_images()[args.image]]
    with tempfile.TemporaryDirectory() as tmp:
        fa, qa = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        modify_model_output_intermediate_tensors(str(args.fp32), str(fa), save_as_external_data=False)
        modify_model_output_intermediate_tensors(str(args.qdq), str(qa), save_as_external_data=False)
        reader = ImageCalibrationReader(img, input_name(fm), input_size(fm))
        f_act = collect_activations(str(fa), reader)
        reader.rewind()
        q_act = collect_activations(str(qa), reader)
    match = create_activation_matching(q_act, f_act)
    err = compute_activation_error(match)
    producers = {o: n for n in fm.graph.node for o in n.output}
    rows = []
    for name, e in err.items():
        n = producers.get(name)
        ins = [err[i]["xmodel_err"] for i in (n.input if n else []) if i in err and "xmodel_err" in err[i]]
        x = float(e.get("xmodel_err", float("nan")))
        rows.append({
            "tensor": name, "node": n.name if n else None, "op": n.op_type if n else None,
            "qdq_sqnr": float(e.get("qdq_err", float("nan"))), "xmodel_sqnr": x,
            "drop": (min(ins) - x) if ins else None,
        })
    args.out.write_text(json.dumps(rows, indent=1))
    print("lowest local qdq SQNR:")
    for r in sorted(rows, key=lambda r: r["qdq_sqnr"])[: args.top]:
        print(f"  {r['qdq_sqnr']:7.2f} dB  x={r['xmodel_sqnr']:7.2f}  {r['op']}  {r['node']}")
    print("largest SQNR drop across one node:")
    for r in sorted((r for r in rows if r["drop"] is not None), key=lambda r: -r["drop"])[: args.top]:
        print(f"  drop {r['drop']:6.2f} dB  x={r['xmodel_sqnr']:7.2f}  {r['op']}  {r['node']}")


if __name__ == "__main__":
    main()
