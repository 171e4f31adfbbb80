"""Does an int8 model keep its masks on this CPU? IoU against the reference masks, fused and exact.

    .venv/bin/python bench/fidelity.py MODEL_DIR/isnet-general-tiny.onnx [--threads 2] [--exact]

Each fixture photo goes through the service's own decode (MAX_DIMENSION 1024), pre-processing, the
deployed session (create_session: onnxruntime's fused integer kernels) and post-processing; the mask
is scored against NAME.isnet.png (IS-Net models) or NAME.u2netp.png (u2netp models), IoU of alpha>127
and MAE, as bench/run.py and compare_rembg.py score the HTTP answers. `--exact` scores the same
quantised graph a second time with graph optimisation off, so each QDQ triple runs as float
arithmetic on the dequantised values: what the model computes on a CPU whose int8 kernels are exact.
The two differ where the CPU's kernels saturate (VPMADDUBSW on x86 without VNNI: docs/models.md).
The first line names the CPU and its int8 instruction flags (common.cpu_fields).
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import common  # noqa: E402
from app import imaging, model_io  # noqa: E402
from app.services.isnet_tiny_service import create_session  # noqa: E402
from app.services.model_store import spec_for_input_size  # noqa: E402

def exact_session(path: str, threads: int) -> ort.InferenceSession:
    """The same graph without fusion: DequantizeLinear -> float op -> QuantizeLinear, node by node."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])


def score_session(session: ort.InferenceSession, model_name: str) -> dict[str, tuple[float, float]]:
    """{photo stem: (IoU, MAE)} for every fixture photo with a reference mask."""
    size = int(session.get_inputs()[0].shape[2])
    spec = spec_for_input_size(size)
    name = session.get_inputs()[0].name
    scores = {}
    for photo in common.fixture_images():
        ref = common.reference_mask(photo, model_name)
        if ref is None:
            continue
        header = imaging.open_checked(photo.read_bytes(), 10**9, None, 1024, size)
        decoded = imaging.decode(header, 1024, size)
        prediction = session.run(None, {name: model_io.model_input(decoded.model_rgb, spec.mean, spec.std)})[0]
        scores[photo.stem] = common.score(model_io.mask_from_output(prediction, decoded.size), ref)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--exact", action="store_true", help="also score the unfused graph")
    args = parser.parse_args()
    model_name = "u2netp" if args.model.stem.startswith("u2netp") else args.model.stem  # u2netp-int8: rembg's u2netp masks
    cpu = common.cpu_fields()
    print(f"cpu: {cpu['cpu']}, int8 flags: {cpu['int8_flags']}; onnxruntime {ort.__version__}")
    runs = [("fused (deployed)", create_session(str(args.model), args.threads))]
    if args.exact:
        runs.append(("exact (no fusion)", exact_session(str(args.model), args.threads)))
    results = [(label, score_session(session, model_name)) for label, session in runs]
    stems = list(results[0][1])
    print("| photo | " + " | ".join(f"{label} IoU / MAE" for label, _ in results) + " |")
    print("| --- |" + " --- |" * len(results))
    for stem in stems:
        print(f"| {stem} | " + " | ".join(f"{r[stem][0]:.4f} / {r[stem][1]:.4f}" for _, r in results) + " |")
    print("| **mean / min IoU** | " + " | ".join(
        f"**{statistics.mean(v[0] for v in r.values()):.4f} / {min(v[0] for v in r.values()):.4f}**"
        for _, r in results) + " |")


if __name__ == "__main__":
    main()
