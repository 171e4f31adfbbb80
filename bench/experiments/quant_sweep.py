"""Sweep int8 quantisation recipes for isnet-general-tiny and measure each one.

    python bench/experiments/quant_sweep.py --source ../shared/models/isnet-general-use.fp16.onnx --out /tmp/sweep
    python bench/experiments/quant_sweep.py ... --only base,minmax      # a subset
    python bench/experiments/quant_sweep.py ... --list                  # variant names

For every variant: build (app.services.model_build.quantize, calibration ranges
cached per method in OUT/calib-*.json so variants that only differ in excluded
nodes reuse them), then measure in a fresh subprocess with bench/experiments/measure_model.py
(peak RSS, median latency, IoU/MAE vs the fp32 IS-Net reference masks). Results
are appended to OUT/results.jsonl; variants already there are skipped unless
--force. Runs strictly one thing at a time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from app.services.model_build import (  # noqa: E402
    DEFAULT_RECIPE,
    Recipe,
    calibration_images,
    load_source,
    quantize,
)

# The colleague's starting recipe: Percentile 99.999, four roles in float.
ROLES4 = ("first_conv", "mask_conv", "mask_resize", "mask_sigmoid")
BASE = replace(DEFAULT_RECIPE, calibrate_method="Percentile", percentile=99.999, exclude=ROLES4)


def names_with(model: onnx.ModelProto, prefixes: tuple[str, ...], ops: tuple[str, ...] = ()) -> tuple[str, ...]:
    """Node names starting with any prefix (and of one of ``ops`` if given)."""
    return tuple(
        n.name for n in model.graph.node
        if n.name.startswith(prefixes) and (not ops or n.op_type in ops)
    )


def variants(model: onnx.ModelProto) -> dict[str, Recipe]:
    """Every recipe the sweep knows, by name."""
    v: dict[str, Recipe] = {
        "base": BASE,  # P99.999, per-channel, U8/S8, 4 roles in float
        "all-int8": replace(BASE, exclude=("mask_sigmoid",)),
        "minmax": replace(BASE, calibrate_method="MinMax"),
        "entropy": replace(BASE, calibrate_method="Entropy"),
        "p99.99": replace(BASE, percentile=99.99),
        "p99.9999": replace(BASE, percentile=99.9999),
        "p99.9": replace(BASE, percentile=99.9),
        "p99.95": replace(BASE, percentile=99.95),
        "no-first-conv": replace(BASE, exclude=("mask_conv", "mask_resize", "mask_sigmoid")),
        "no-mask-conv": replace(BASE, exclude=("first_conv", "mask_resize", "mask_sigmoid")),
        "resize-float": replace(BASE, exclude_nodes=names_with(model, ("/",), ("Resize",))),
        "stage1d-float": replace(BASE, exclude_nodes=names_with(model, ("/stage1d/",))),
        "stage1-float": replace(BASE, exclude_nodes=names_with(model, ("/stage1/",))),
        "reduce-range": replace(BASE, reduce_range=True),
        "qoperator": replace(BASE, quant_format="QOperator"),
    }
    # Entropy-calibrated variants keeping the convs with the largest SQNR drop
    # (bench/experiments/sensitivity.py on a calibration image) in float, cheapest first.
    ent = replace(BASE, calibrate_method="Entropy")
    low_res = ("/stage2d/rebnconv1d/",)
    low_res6 = low_res + ("/stage3/rebnconv1d/", "/stage3d/rebnconv1d/", "/stage4d/rebnconv1d/",
                          "/stage2d/rebnconv2/", "/stage2d/rebnconv3/")
    full_res = ("/stage1d/rebnconv1d/", "/stage1d/rebnconv2/")
    v["ent-s2d"] = replace(ent, exclude_nodes=names_with(model, low_res))
    v["ent-low6"] = replace(ent, exclude_nodes=names_with(model, low_res6))
    v["ent-low6-s1d"] = replace(ent, exclude_nodes=names_with(model, low_res6 + full_res))
    v["ent-no-first-conv"] = replace(ent, exclude=("mask_conv", "mask_resize", "mask_sigmoid"))
    v["ent-no-mask-conv"] = replace(ent, exclude=("first_conv", "mask_resize", "mask_sigmoid"))
    v["ent-low6-no-first-conv"] = replace(v["ent-low6"], exclude=("mask_conv", "mask_resize", "mask_sigmoid"))
    v["ent-head"] = replace(ent, exclude=("mask_resize", "mask_sigmoid"))
    concat = names_with(model, ("/",), ("Concat",))
    v["ent-head-concat"] = replace(v["ent-head"], exclude_nodes=concat)
    v["ent-head-low6"] = replace(v["ent-head"], exclude_nodes=names_with(model, low_res6))
    # Stage ablation: the chosen base with one IS-Net stage kept in float.
    nf = v["ent-no-first-conv"]
    for st in ("stage1", "stage2", "stage3", "stage4", "stage5", "stage6",
               "stage5d", "stage4d", "stage3d", "stage2d", "stage1d"):
        v[f"abl-{st}"] = replace(nf, exclude_nodes=names_with(model, (f"/{st}/",)))
    top = tuple(n.name for n in model.graph.node if n.name.count("/") == 1 and n.op_type in ("Resize", "Concat", "MaxPool"))
    v["abl-top"] = replace(nf, exclude_nodes=top)
    v["ent-nfc-b512"] = replace(nf, num_bins=512)
    v["ent-nfc-b2048"] = replace(nf, num_bins=2048)
    return v


def measure(model_path: Path, env_extra: dict[str, str], extra_args: list[str] = ()) -> dict:
    """Run bench/experiments/measure_model.py in a fresh process and parse its JSON."""
    env = dict(os.environ, **env_extra)
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "experiments" / "measure_model.py"), str(model_path), "--json", *extra_args],
        env=env, check=True, capture_output=True, text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def calib_cache(out: Path, r: Recipe, suffix: str = "") -> Path:
    """Per-method (and per calibration set) calibration cache file."""
    tag = r.calibrate_method + (f"-{r.percentile}" if r.calibrate_method == "Percentile" else "")
    if r.num_bins is not None:
        tag += f"-b{r.num_bins}-q{r.num_quantized_bins}"
    return out / f"calib-{tag}{suffix}.json"


def make_calrefs(fp32_path: Path, calref: Path) -> None:
    """fp32 IS-Net masks of the calibration images (the selection references)."""
    if calref.is_dir() and any(calref.iterdir()):
        return
    import onnxruntime as ort
    from PIL import Image

    sys.path.insert(0, str(ROOT / "bench" / "experiments"))
    from measure_model import postprocess, preprocess

    calref.mkdir(parents=True, exist_ok=True)
    sess = ort.InferenceSession(str(fp32_path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    for p in calibration_images():
        with Image.open(p) as im:
            pred = sess.run(None, {inp.name: preprocess(im, tuple(inp.shape[2:]))})[0]
            postprocess(pred, im.size).save(calref / f"{p.stem}.isnet.png")


def print_table(results: Path) -> None:
    """Markdown table of every measured variant (last measurement per name)."""
    rows: dict[str, dict] = {}
    for line in results.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows[r["variant"]] = r
    print("| variant | file MB | peak RSS MB (1 inference) | peak RSS MB (6) | median run s | load avg | "
          "IoU mean | IoU min | MAE | worst image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        worst = min(r["per_image"].items(), key=lambda kv: kv[1]["iou"])[0] if r.get("per_image") else ""
        print(f"| {name} | {r['size_mb']} | {r['peak_rss_1_mb']} | {r['peak_rss_all_mb']} | {r['median_run_s']} | "
              f"{r.get('loadavg_1m_at_end', '')} | {r['iou_mean']} | {r['iou_min']} | {r['mae_mean']} | {worst} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--source", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default="", help="comma-separated variant names")
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--calib-dir", type=Path, default=None,
                    help="calibrate on this directory instead of app/model_build_calibration")
    ap.add_argument("--tag", default="", help="suffix for variant names (use with --calib-dir)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--table", action="store_true", help="print OUT/results.jsonl as a markdown table")
    ap.add_argument("--select", action="store_true",
                    help="measure on the calibration images against fp32 masks (OUT/calref) instead of the "
                         "evaluation photos; results go to OUT/results-select.jsonl (for choosing nodes "
                         "without looking at the evaluation set)")
    ap.add_argument("--fp32", action="store_true", help="also measure the pruned fp32 model")
    ap.add_argument("--malloc-env", default="MALLOC_MMAP_THRESHOLD_=131072",
                    help="env for the measuring process, e.g. 'MALLOC_MMAP_THRESHOLD_=131072' or ''")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.table:
        print_table(args.out / ("results-select.jsonl" if args.select else "results.jsonl"))
        return
    env_extra = dict(kv.split("=", 1) for kv in args.malloc_env.split() if kv)

    fp32_path = args.out / "fp32.onnx"
    model = load_source(args.source)
    if not fp32_path.exists():
        onnx.save(model, str(fp32_path))
    all_v = variants(model)
    if args.list:
        print("\n".join(all_v))
        return
    names = [n for n in args.only.split(",") if n] or list(all_v)
    results = args.out / ("results-select.jsonl" if args.select else "results.jsonl")
    extra_args: list[str] = []
    if args.select:
        calref = args.out / "calref"
        make_calrefs(fp32_path, calref)
        extra_args = ["--images", str(calibration_images()[0].parent), "--masks", str(calref)]
    done = set()
    if results.exists():
        done = {json.loads(line)["variant"] for line in results.read_text().splitlines() if line.strip()}
    todo: list[tuple[str, Path, Recipe | None]] = []
    if args.fp32:
        todo.append(("fp32-pruned", fp32_path, None))
    todo += [(n + args.tag, args.out / f"{n}{args.tag}.onnx", all_v[n]) for n in names]
    images = calibration_images(args.calib_dir) if args.calib_dir else calibration_images()
    for name, path, recipe in todo:
        if name in done and not args.force:
            print(f"skip {name} (in results)")
            continue
        build_s = 0.0
        if recipe is not None and not (args.select and path.exists() and not args.force):
            t = time.perf_counter()
            path.write_bytes(quantize(model, images, recipe, calibration_cache=calib_cache(args.out, recipe, args.tag)))
            build_s = time.perf_counter() - t
        res = measure(path, env_extra, extra_args)
        res.update(variant=name, build_s=round(build_s, 1), env=args.malloc_env,
                   recipe=asdict(recipe) if recipe else None)
        with results.open("a") as fh:
            fh.write(json.dumps(res) + "\n")
        print(f"{name}: {res['size_mb']} MB file, peak {res['peak_rss_1_mb']} MB, "
              f"{res['median_run_s']} s, IoU {res['iou_mean']}/{res['iou_min']}, MAE {res['mae_mean']}",
              flush=True)


if __name__ == "__main__":
    main()
