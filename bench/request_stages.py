"""Where a cutout request's time goes, stage by stage: ours in-process, rembg's in-process, and both over HTTP.

    env MALLOC_ARENA_MAX=2 GLIBC_TUNABLES=glibc.malloc.hugetlb=1 \
        .venv/bin/python bench/request_stages.py --model-dir DIR [--model u2netp-int8] [--runs 7]
        [--photos animal-1.jpg,plants-1.jpg] [--rembg-venv DIR] [--ports 8500-8599] [--json OUT]

1. Ours, in this process, as the pipeline runs a default `POST /api/bg/remove` (pipeline._in_slot and
   remove_background's finish, in that order, each stage timed with perf_counter): the header check,
   decode (pixels, orientation, the model's 320 px LANCZOS input, the output-size resize), the model
   tensor, inference (session.run), the mask back at output size, decontaminate, cutout, PNG encode. The
   session is the service's own (IsnetTinyService with the environment's settings: ORT_THREADS, arena off),
   and the process has the image's malloc settings (set them on the command line as above; tune_malloc).
   The whole of pipeline.remove_background is timed too, as a check on the sum.
2. rembg 2.0.86's own code, in a worker process of its virtualenv (this file run with --rembg-worker):
   rembg.remove's steps for `rembg s`'s defaults (open, exif_transpose, normalize, run, the mask at full
   size, naive_cutout, PNG save at Pillow's default level) on rembg's default u2netp session.
3. Over HTTP: the deployed servers (bench/compare_rembg.py's: gunicorn with the Dockerfile's runtime ENV,
   and `rembg s`), the same photo, so HTTP and framework time = request median - in-process total.
4. PNG encode settings on our cutout: Pillow's compress_level and zlib strategy, time and bytes.
Everything alternates round by round (ours in-process, rembg in-process, our server, rembg's server), so
all see the same load; medians of --runs after one warm-up. Run under flock /tmp/bench.lock.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
PNG_VARIANTS: dict[str, dict[str, int]] = {
    "level 1, Z_RLE (ours)": {"compress_level": 1, "compress_type": zlib.Z_RLE},
    "level 1 (before)": {"compress_level": 1},
    "level 0 (stored)": {"compress_level": 0},
    "level 2": {"compress_level": 2},
    "level 6 (Pillow's default, rembg)": {"compress_level": 6},
    "level 1, Z_HUFFMAN_ONLY": {"compress_level": 1, "compress_type": zlib.Z_HUFFMAN_ONLY},
}


def _timed(times: dict[str, list[float]], name: str, fn, *args):
    started = time.perf_counter()
    value = fn(*args)
    times.setdefault(name, []).append(time.perf_counter() - started)
    return value


# --------------------------------------------------------------------------- rembg (its own venv)


def rembg_worker() -> int:
    """Read photo paths on stdin, answer one JSON line of stage seconds each (rembg's remove(), split)."""
    import numpy as np
    from PIL import Image, ImageOps
    from rembg import new_session
    from rembg.bg import naive_cutout

    session = new_session("u2netp")
    for line in sys.stdin:
        data = Path(line.strip()).read_bytes()
        times: dict[str, list[float]] = {}
        total = time.perf_counter()

        def opened():
            image = Image.open(io.BytesIO(data))
            image.load()
            return image

        img = _timed(times, "decode", opened)
        img = _timed(times, "orientation (exif_transpose)", ImageOps.exif_transpose, img)
        feed = _timed(times, "model input (LANCZOS 320 + normalise)", session.normalize, img,
                      (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), (320, 320))
        out = _timed(times, "inference (session.run)", session.inner_session.run, None, feed)

        def mask_of(outs):
            pred = outs[0][:, 0, :, :]
            pred = np.squeeze((pred - pred.min()) / (pred.max() - pred.min()))
            return Image.fromarray((pred * 255).astype("uint8"), mode="L").resize(img.size, Image.Resampling.LANCZOS)

        mask = _timed(times, "mask at output size (LANCZOS)", mask_of, out)
        cut = _timed(times, "cutout", naive_cutout, img, mask)

        def png(image):
            buffer = io.BytesIO()
            image.save(buffer, "PNG")
            return buffer.getvalue()

        payload = _timed(times, "PNG encode", png, cut)
        times["total"] = [time.perf_counter() - total]
        print(json.dumps({k: v[0] for k, v in times.items()} | {"bytes": len(payload), "size": img.size}), flush=True)
    return 0


# --------------------------------------------------------------------------- ours (this process)


class Ours:
    """The service's session and the pipeline's stages, in the pipeline's order."""

    def __init__(self) -> None:
        sys.path.insert(0, str(HERE.parent))
        from app.config import Config
        from app.heap import tune_malloc
        from app.services.isnet_tiny_service import IsnetTinyService

        tune_malloc()
        self.config = Config.from_env()
        self.service = IsnetTinyService(self.config)
        self.service.wait_until_ready(300)

    def stages(self, data: bytes) -> tuple[dict[str, float], object]:
        from app import imaging, matting, model_io, pipeline

        service, config, times = self.service, self.config, {}
        spec = service._file.spec  # the loaded model's pre-processing constants
        total = time.perf_counter()
        with service.slot() as size:
            header = _timed(times, "header check (open_checked, EXIF orientation)", imaging.open_checked,
                            io.BytesIO(data), config.max_pixels, config.max_decode_bytes, config.max_dimension)
            side = pipeline._output_side(header.size, pipeline.Options(), config)
            decoded = _timed(times, "decode (pixels, orientation, LANCZOS 320 for the model, output resize)",
                             imaging.decode, header, side, size)
            tensor = _timed(times, "model input (normalise to NCHW)", model_io.model_input, decoded.model_rgb,
                            spec.mean, spec.std)
            session = service._session
            out = _timed(times, "inference (session.run)", session.run, [service._output_name],
                         {service._input_name: tensor})
            mask = _timed(times, "mask at output size (LANCZOS)", model_io.mask_from_output, out[0], decoded.size)
            alpha = _timed(times, "combine alpha", imaging.combine_alpha, mask, decoded.alpha)
            rgb = _timed(times, "decontaminate (matting, default on)", matting.decontaminate, decoded.rgb, alpha)
            framed = _timed(times, "framing (crop/scale off)", pipeline._framed, rgb, alpha, pipeline.Options())
            cut = _timed(times, "cutout (putalpha, clear transparent)", imaging.cutout, *framed)
            _timed(times, "subject box (for the headers)", pipeline._foreground, alpha)
            payload = _timed(times, "PNG encode (imaging.encode)", imaging.encode, cut, "PNG")
        times = {k: v[0] for k, v in times.items()}
        times["total"] = time.perf_counter() - total
        times["bytes"] = len(payload)
        return times, cut

    def whole(self, data: bytes) -> float:
        from app import pipeline

        started = time.perf_counter()
        pipeline.remove_background(data, "x", pipeline.Options(), self.service, self.config)
        return time.perf_counter() - started


def png_variants(image) -> dict[str, tuple[float, int]]:
    out = {}
    for label, settings in PNG_VARIANTS.items():
        buffer = io.BytesIO()
        started = time.perf_counter()
        image.save(buffer, format="PNG", **settings)
        out[label] = (time.perf_counter() - started, buffer.tell())
    return out


# --------------------------------------------------------------------------- main


def median_table(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in rows[0] if k not in ("size",)]
    return {k: statistics.median(r[k] for r in rows) for k in keys}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rembg-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None)
    parser.add_argument("--model", default="u2netp-int8")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--photos", default="animal-1.jpg,plants-1.jpg")
    parser.add_argument("--rembg-venv", type=Path, default=Path("/tmp/i19-rembg-venv"))
    parser.add_argument("--ports", default="8500-8599")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.rembg_worker:
        return rembg_worker()

    sys.path.insert(0, str(HERE))
    import common
    import compare_rembg
    import requests

    model_dir = args.model_dir or Path(os.environ.get("MODEL_DIR", common.DEFAULT_MODEL_DIR))
    docker_env = compare_rembg.dockerfile_runtime_env()
    for key in ("ORT_THREADS", "PRELOAD_MODEL"):
        os.environ.setdefault(key, docker_env[key])
    os.environ.update(BG_MODEL=args.model, MODEL_DIR=str(model_dir))
    low, high = (int(x) for x in args.ports.split("-"))
    compare_rembg.PORTS = iter(range(low, high + 1))
    photos = [p for p in common.fixture_images() if p.name in args.photos.split(",")]
    work = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    home = compare_rembg.u2net_home(work)

    ours = Ours()
    worker = subprocess.Popen([str(args.rembg_venv / "bin" / "python"), __file__, "--rembg-worker"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                              env={**{k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))},
                                   "U2NET_HOME": str(home)})
    servers = [compare_rembg.ours(args.model, model_dir, docker_env, {}),
               compare_rembg.rembg(args.rembg_venv / "bin", home)]
    print(f"machine: {json.dumps(common.machine())}")
    print(f"command: {common.command_line()}")
    print(f"uptime at start: {common.loadavg()}", flush=True)
    results: dict[str, dict[str, list]] = {p.name: {"ours": [], "rembg": [], "whole": [], "png": [],
                                                    "http ours": [], "http rembg": []} for p in photos}
    try:
        for target in servers:
            target.server.launch()
        for target in servers:
            target.server.wait(target.health, timeout_s=300)
        sessions = [requests.Session() for _ in servers]
        for run in range(args.runs + 1):
            for photo in photos:
                data = photo.read_bytes()
                stages, cut = ours.stages(data)
                whole = ours.whole(data)
                worker.stdin.write(f"{photo}\n")
                worker.stdin.flush()
                theirs = json.loads(worker.stdout.readline())
                pngs = png_variants(cut)
                http = []
                for target, session in zip(servers, sessions):
                    started = time.perf_counter()
                    target.post(session, photo.name, data).raise_for_status()
                    http.append(time.perf_counter() - started)
                if run:  # the first round is the warm-up
                    row = results[photo.name]
                    row["ours"].append(stages)
                    row["rembg"].append(theirs)
                    row["whole"].append(whole)
                    row["png"].append(pngs)
                    row["http ours"].append(http[0])
                    row["http rembg"].append(http[1])
    finally:
        for target in servers:
            target.server.stop()
        worker.stdin.close()
        worker.wait(10)
    print(f"uptime at end: {common.loadavg()}\n")
    report(results, args)
    if args.json:
        args.json.write_text(json.dumps({"machine": common.machine(), "command": common.command_line(),
                                         "results": results}, indent=1, default=str))
    return 0


def report(results: dict[str, dict[str, list]], args: argparse.Namespace) -> None:
    for name, row in results.items():
        ours, theirs = median_table(row["ours"]), median_table(row["rembg"])
        size = row["rembg"][0]["size"]
        print(f"### {name} (rembg's output {size[0]}x{size[1]}), medians of {args.runs}, ms\n")
        print("| ours: stage | ms | | rembg: stage | ms |\n| --- | ---: | --- | --- | ---: |")
        left = [(k, v) for k, v in ours.items() if k not in ("total", "bytes")]
        right = [(k, v) for k, v in theirs.items() if k not in ("total", "bytes")]
        for i in range(max(len(left), len(right))):
            a = left[i] if i < len(left) else ("", None)
            b = right[i] if i < len(right) else ("", None)
            print(f"| {a[0]} | {'' if a[1] is None else f'{a[1] * 1000:.1f}'} | | {b[0]} | "
                  f"{'' if b[1] is None else f'{b[1] * 1000:.1f}'} |")
        http_ours, http_theirs = statistics.median(row["http ours"]), statistics.median(row["http rembg"])
        print(f"| **in-process total** | **{ours['total'] * 1000:.1f}** | | **in-process total** | "
              f"**{theirs['total'] * 1000:.1f}** |")
        print(f"| pipeline.remove_background, whole | {statistics.median(row['whole']) * 1000:.1f} | | | |")
        print(f"| PNG bytes | {ours['bytes']:,.0f} | | PNG bytes | {theirs['bytes']:,.0f} |")
        print(f"| HTTP request (deployed server), median | {http_ours * 1000:.1f} | | HTTP request (`rembg s`) | "
              f"{http_theirs * 1000:.1f} |")
        print(f"| HTTP and framework = request - in-process | {(http_ours - ours['total']) * 1000:.1f} | | "
              f"the same | {(http_theirs - theirs['total']) * 1000:.1f} |\n")
        print("| PNG setting (our cutout) | ms | bytes |\n| --- | ---: | ---: |")
        for label in PNG_VARIANTS:
            ms = statistics.median(r[label][0] for r in row["png"]) * 1000
            print(f"| {label} | {ms:.1f} | {row['png'][0][label][1]:,} |")
        print()


if __name__ == "__main__":
    sys.exit(main())
