"""Edges: how close the deployed service's cutouts come to the truth where the subject meets its background.

What: composites whose truth is exact by construction (../shared/fixtures/matting: a portrait F with its
matte a over green, magenta and a photo B: I = a*F + (1-a)*B, see SOURCES.txt there) are cut out at full
size by the deployed server with refine and decontaminate each on and off. Each cutout is placed on black
and on white and compared with a*F + (1-a)*B2 in the soft band (0 < a < 1, dilated 3 px), and the table
says, averaged over the composites:

- alpha error in band: mean |alpha_out - a| (and its bias, mean alpha_out - a; negative = strands cut off);
- visible colour error: mean alpha_out * |F_out - F| over the band's pixels and channels, x255 (colour the
  viewer sees that is not the subject's);
- recomposite error: mean |cutout over B2 - (a*F + (1-a)*B2)| for B2 black and white, x255;
- extra time: at the deployed MAX_DIMENSION=1024 (about 1 MP), the median over composites and rounds of
  (request time - the same composite's request with both off in the same round) per megapixel, and the
  ratio of median request times; the four variants alternate, in an order rotating per request;
- peaks: whole-server VmHWM (master + worker) of a fresh server per variant at the deployed settings
  (~1 MP outputs) and at MAX_DIMENSION=4096 with a 12 MP photo, sequentially and then with 8 clients.

Beside them, the colour reference, pymatting's estimate_foreground_ml on the service's own alpha (refine
off, and refine on), and rembg 2.0.86's `-a` on the service's mask, each run in its own virtualenv by
bench/edges_peers.py (never in the project's requirements). Fidelity where the model is sure: IoU of
alpha > 0.5 on the six fixture photos at the deployed settings, with refine off and on, for
isnet-general-tiny against fp32 IS-Net's masks (../shared/fixtures/masks/*.isnet.png) and for the bundled
u2netp against rembg's (*.u2netp.png). Below the table, per variant and per error, the composites it makes
worse than both off, and every row per background. The upscaled phase does the same at a 4096 px long side
(MAX_DIMENSION=4096, above the model's input), with the IoU of alpha > 0.5 against the truth's in the band.

How: every server is `gunicorn -c gunicorn.conf.py app_isnet_tiny:app` with the runtime ENV lines of
Dockerfile.isnet-tiny (bench/compare_rembg.py reads them) and BG_MODEL=isnet-general-tiny from
--model-dir; the quality phase sets MAX_DIMENSION=2048 so that every composite (at most 1920 px) is
served at full size. Scores are deterministic, so the quality, peers and fidelity phases may run outside
the benchmark lock (rembg -a takes minutes); timing and memory run under it, scoring the cutouts the
quality phase left in --work:

    python bench/edges.py --phases quality,peers,fidelity --model-dir /tmp/m17
    flock /tmp/bench.lock python bench/edges.py --phases peers,timing,memory --model-dir /tmp/m17

Peer results are cached in --work by a hash of their input, so a rerun only redoes what changed;
`--rembg-limit N` runs rembg -a on the first N composites only.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
from PIL import Image, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from compare_rembg import NOT_FROM_DOCKERFILE, dockerfile_runtime_env  # noqa: E402

BACKGROUNDS: dict[str, tuple[int, int, int] | str] = {"green": (0, 200, 0), "magenta": (255, 0, 255),
                                                      "photo": "plants-1.jpg"}
# (refine, decontaminate): both off first, the service as it was before the edge stage
VARIANTS: dict[str, tuple[bool, bool]] = {
    "both off (the model's mask, photo colours)": (False, False),
    "decontaminate only": (False, True),
    "refine only": (True, False),
    "refine + decontaminate (the defaults)": (True, True),
}
OFF, DEFAULTS = "both off (the model's mask, photo colours)", "refine + decontaminate (the defaults)"
PEERS = {"pymatting": "/tmp/edges17-pymatting", "rembg-a": "/tmp/edges17-rembg"}
BAND_DILATION = 3
SCORES = {"alpha_err": "alpha error", "colour_err": "visible colour error", "recomposite_err": "recomposite error"}


@dataclass
class Case:
    name: str  # NAME.BACKGROUND
    composite: Path
    foreground: np.ndarray  # F, float32 (H, W, 3) in [0, 1]
    alpha: np.ndarray  # a, float32 (H, W) in [0, 1]

    @property
    def megapixels(self) -> float:
        return self.alpha.size / 1e6


# --------------------------------------------------------------------------- composites and scores


def _background(kind: tuple[int, int, int] | str, size: tuple[int, int]) -> np.ndarray:
    if isinstance(kind, tuple):
        return np.broadcast_to(np.array(kind, np.float32) / 255, (size[1], size[0], 3))
    images, _ = common.fixture_dirs()
    photo = ImageOps.fit(Image.open(images / kind).convert("RGB"), size, Image.Resampling.LANCZOS)
    return np.asarray(photo, np.float32) / 255


def composites(work: Path, limit: int | None) -> list[Case]:
    """I = a*F + (1-a)*B for each portrait and background, written as 8-bit PNGs under work/in."""
    matting = common.SHARED / "fixtures" / "matting"
    if not matting.is_dir():
        raise SystemExit(f"{matting} is missing: the benchmark needs ../shared/fixtures/matting (or --shared)")
    folder = work / "in"
    folder.mkdir(parents=True, exist_ok=True)
    cases = []
    for photo in sorted(matting.glob("*.jpg"))[:limit]:
        fg = np.asarray(Image.open(photo).convert("RGB"), np.float32) / 255
        alpha = np.asarray(Image.open(photo.with_suffix(".alpha.png")).convert("L"), np.float32) / 255
        for bg_name, kind in BACKGROUNDS.items():
            path = folder / f"{photo.stem}.{bg_name}.png"
            if not path.is_file():
                bg = _background(kind, (alpha.shape[1], alpha.shape[0]))
                mixed = alpha[..., None] * fg + (1 - alpha[..., None]) * bg
                Image.fromarray((mixed * 255 + 0.5).astype(np.uint8)).save(path, compress_level=1)
            cases.append(Case(f"{photo.stem}.{bg_name}", path, fg, alpha))
    return cases


UPSCALE_SIDE = 4096
UPSCALE_VARIANTS = ("both off (the model's mask, photo colours)", "decontaminate only",
                    "refine + decontaminate (the defaults)")


def upscaled(work: Path, limit: int | None) -> Iterator[Case]:
    """The composites at UPSCALE_SIDE on the long side (about 11 MP, what MAX_DIMENSION=4096 serves at full
    size): each portrait and its matte resized bicubically alike, then I = a*F + (1-a)*B as in composites().
    One portrait's arrays at a time (36 of them at 11 MP would be 5 GB)."""
    folder = work / f"in{UPSCALE_SIDE}"
    folder.mkdir(parents=True, exist_ok=True)
    for photo in sorted((common.SHARED / "fixtures" / "matting").glob("*.jpg"))[:limit]:
        source = Image.open(photo).convert("RGB")
        scale = UPSCALE_SIDE / max(source.size)
        size = round(source.size[0] * scale), round(source.size[1] * scale)
        fg = np.asarray(source.resize(size, Image.Resampling.BICUBIC), np.float32) / 255
        matte = Image.open(photo.with_suffix(".alpha.png")).convert("L")
        alpha = np.clip(np.asarray(matte.convert("F").resize(size, Image.Resampling.BICUBIC)) / 255, 0, 1)
        alpha = np.round(alpha * 255) / 255  # the 8-bit matte the composite is made from, as composites() uses
        for bg_name, kind in BACKGROUNDS.items():
            path = folder / f"{photo.stem}.{bg_name}.png"
            if not path.is_file():
                mixed = alpha[..., None] * fg + (1 - alpha[..., None]) * _background(kind, size)
                Image.fromarray((mixed * 255 + 0.5).astype(np.uint8)).save(path, compress_level=1)
            yield Case(f"{photo.stem}.{bg_name}", path, fg, alpha.astype(np.float32))


def upscaled_run(args: argparse.Namespace) -> dict[str, list[dict]]:
    """At MAX_DIMENSION=4096, the upscaled composites through UPSCALE_VARIANTS (alternating per composite),
    scored like the quality phase, with each request's seconds (the times mean something only under the
    benchmark lock). The composites go as lossless PNGs, so the server takes uploads up to 64 MB here (its
    deployed 8 MB would need a JPEG, and the truth would no longer be exact). The model sees 1024 px: above
    it, the mask is a resize and its ramp is what refine turns into an edge."""
    results: dict[str, list[dict]] = {name: [] for name in UPSCALE_VARIANTS}
    with deployed_server("upscaled", args.model_dir, args.port + 6, MAX_DIMENSION=str(UPSCALE_SIDE),
                         MAX_FILE_SIZE_MB="64") as server:
        for index, case in enumerate(upscaled(args.work, args.limit)):
            data = case.composite.read_bytes()
            shift = index % len(UPSCALE_VARIANTS)
            for name in UPSCALE_VARIANTS[shift:] + UPSCALE_VARIANTS[:shift]:
                image, seconds = cut(server, data, *VARIANTS[name])
                if image.size != case.alpha.shape[::-1]:
                    raise RuntimeError(f"{case.name}: served {image.size}, not full size")
                results[name].append({"case": case.name, "mp": case.megapixels, "seconds": seconds,
                                      **scores(image, case)})
            print(f"{UPSCALE_SIDE} {case.name}: " + ", ".join(
                f"{_slug(n)} {rows[-1]['recomposite_err']:.2f}" for n, rows in results.items()),
                file=sys.stderr, flush=True)
    return {name: results[name] for name in UPSCALE_VARIANTS}


def _dilated(flags: np.ndarray, radius: int) -> np.ndarray:
    padded = np.pad(flags, radius)
    out = np.zeros_like(flags)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            out |= padded[dy:dy + flags.shape[0], dx:dx + flags.shape[1]]
    return out


def scores(cutout: Image.Image, case: Case) -> dict[str, float]:
    """The table's three errors for one RGBA cutout against its composite's truth, and the IoU of alpha > 0.5
    against the truth's in the band (where the 0.5 contour runs: the upscaled phase's measure of it)."""
    rgba = np.asarray(cutout.convert("RGBA"), np.float32) / 255
    a_out, f_out = rgba[..., 3], rgba[..., :3]
    band = _dilated((case.alpha > 0) & (case.alpha < 1), BAND_DILATION)
    a, fg = case.alpha[band], case.foreground[band]
    ao, fo = a_out[band], f_out[band]
    diff = ao - a
    recomposite = [np.abs(ao[:, None] * fo + (1 - ao[:, None]) * b2 - (a[:, None] * fg + (1 - a[:, None]) * b2)).mean()
                   for b2 in (0.0, 1.0)]
    inside, truth = ao >= 0.5, a >= 0.5
    return {"alpha_err": float(np.abs(diff).mean()), "bias": float(diff.mean()),
            "contour_iou": float((inside & truth).sum() / max(1, (inside | truth).sum())),
            "colour_err": float((ao[:, None] * np.abs(fo - fg)).mean() * 255),
            "recomposite_err": float(np.mean(recomposite) * 255)}


# --------------------------------------------------------------------------- the deployed server


def deployed_server(label: str, model_dir: Path, port: int, model: str = "isnet-general-tiny", **settings: str
                    ) -> common.Server:
    work = Path(tempfile.mkdtemp(prefix=f"bench-edges-{label}-"))
    env = common.base_env(port, work)
    env.pop("GLIBC_TUNABLES", None)
    env.update({k: v for k, v in dockerfile_runtime_env().items() if k not in NOT_FROM_DOCKERFILE})
    env.update(BG_MODEL=model, MODEL_DIR=str(model_dir), **settings)
    argv = [str(common.VENV_BIN / "gunicorn"), *common.GUNICORN_APP]
    return common.Server(label, argv, env, port, work / "server.log", work / "uploads", work / "processed")


def cut(server: common.Server, data: bytes, refine: bool, decontaminate: bool) -> tuple[Image.Image, float]:
    started = time.perf_counter()
    response = requests.post(server.base + "/api/bg/remove", files={"file": ("image.png", data, "image/png")},
                             data={"refine": str(refine).lower(), "decontaminate": str(decontaminate).lower()},
                             timeout=300)
    seconds = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"{server.label}: {response.status_code} {response.text[:200]}")
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image, seconds


def whole_peak_mb(server: common.Server) -> float:
    memory = server.memory()
    return round((memory["worker_hwm_mb"] or 0) + (memory["master_hwm_mb"] or 0), 1)


def quality_run(args: argparse.Namespace, cases: list[Case]) -> dict[str, list[dict]]:
    """Every composite through every variant at full size, cutouts saved under work/out and scored."""
    results: dict[str, list[dict]] = {name: [] for name in VARIANTS}
    with deployed_server("quality", args.model_dir, args.port, MAX_DIMENSION="2048") as server:
        for index, case in enumerate(cases):
            data = case.composite.read_bytes()
            for name, (refine, decontaminate) in VARIANTS.items():
                image, _ = cut(server, data, refine, decontaminate)
                folder = args.work / "out" / _slug(name)
                folder.mkdir(parents=True, exist_ok=True)
                image.save(folder / f"{case.name}.png", compress_level=1)
                results[name].append({"case": case.name, "mp": case.megapixels, **scores(image, case)})
            print(f"{case.name}: " + ", ".join(f"{_slug(n)} {rows[-1]['recomposite_err']:.2f}"
                                               for n, rows in results.items()), file=sys.stderr, flush=True)
    return results


def timing_run(args: argparse.Namespace, cases: list[Case]) -> dict[str, dict]:
    """At the deployed MAX_DIMENSION (1024: about 1 MP), every variant in turn on each composite, the order
    rotating, `--rounds` times. Per variant: median request seconds, the median extra seconds per
    megapixel against both off on the same composite and round, and the ratio of medians."""
    seconds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    extra: dict[str, list[float]] = {name: [] for name in VARIANTS}
    photos = [case.composite.read_bytes() for case in cases[:args.timing_composites]]
    names = list(VARIANTS)
    with deployed_server("timing", args.model_dir, args.port + 2) as server:
        for name in names:
            cut(server, photos[0], *VARIANTS[name])
        for round_ in range(args.rounds):
            for index, data in enumerate(photos):
                shift = (index + round_) % len(names)
                taken = {}
                for name in names[shift:] + names[:shift]:
                    image, taken[name] = cut(server, data, *VARIANTS[name])
                megapixels = image.size[0] * image.size[1] / 1e6
                for name in names:
                    seconds[name].append(taken[name])
                    extra[name].append((taken[name] - taken[OFF]) / megapixels)
    median_off = statistics.median(seconds[OFF])
    return {name: {"median_s": statistics.median(seconds[name]), "extra_s_per_mp": statistics.median(extra[name]),
                   "ratio": statistics.median(seconds[name]) / median_off, "requests": len(seconds[name])}
            for name in names}


FIDELITY_MODELS = ("isnet-general-tiny", "u2netp", "u2netp-int8")  # the last only if --model-dir holds it


def fidelity_run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    """Fidelity where the model is sure: per model, the IoU of alpha > 0.5 on the six fixture photos, at the
    deployed MAX_DIMENSION, against the reference masks (fp32 IS-Net's *.isnet.png for isnet-general-tiny,
    rembg's *.u2netp.png for the bundled u2netp and its int8 build), refine off and on. Deterministic: no
    lock needed."""
    fidelity: dict[str, dict[str, list[float]]] = {}
    for index, model in enumerate(FIDELITY_MODELS):
        if model == "u2netp-int8" and not (args.model_dir / f"{model}.onnx").is_file():
            continue
        rows: dict[str, list[float]] = {"refine off": [], "refine on": []}
        with deployed_server(f"fidelity-{model}", args.model_dir, args.port + 3 + index, model) as server:
            for photo in common.fixture_images():
                reference = common.reference_mask(photo, "u2netp" if model.startswith("u2netp") else model)
                if reference is None:
                    continue
                for label, refine in (("refine off", False), ("refine on", True)):
                    image, _ = cut(server, photo.read_bytes(), refine, False)
                    rows[label].append(common.score(image.getchannel("A"), reference)[0])
        fidelity[model] = rows
    return fidelity


def saved_results(args: argparse.Namespace, cases: list[Case]) -> dict[str, list[dict]]:
    """The scores of the cutouts an earlier quality run saved (no times)."""
    return {name: [{"case": case.name, "mp": case.megapixels,
                    **scores(Image.open(args.work / "out" / _slug(name) / f"{case.name}.png"), case)}
                   for case in cases] for name in VARIANTS}


def _slug(name: str) -> str:
    return {OFF: "off", DEFAULTS: "defaults", "decontaminate only": "decontaminate",
            "refine only": "refine"}.get(name, name)


# --------------------------------------------------------------------------- peers


def peer_run(args: argparse.Namespace, kind: str, cases: list[Case], alpha_from: str) -> list[dict]:
    """bench/edges_peers.py KIND in its venv on the composites with the service's alpha from variant
    alpha_from; outputs cached by a hash of composite and alpha."""
    python = Path(args.pymatting_venv if kind == "pymatting" else args.rembg_venv) / "bin" / "python"
    if not python.is_file():
        print(f"{kind}: no virtualenv at {python.parent.parent}; skipped", file=sys.stderr)
        return []
    source = args.work / "peer-in" / f"{kind}-{_slug(alpha_from)}"
    dest = args.work / "peer-out" / f"{kind}-{_slug(alpha_from)}"
    dest.mkdir(parents=True, exist_ok=True)
    todo = cases[:args.rembg_limit] if kind == "rembg-a" and args.rembg_limit is not None else cases
    seconds: dict[str, float] = {}
    stamps_path = dest / "stamps.json"
    stamps = json.loads(stamps_path.read_text()) if stamps_path.is_file() else {}
    if source.exists():
        for old in source.iterdir():
            old.unlink()
    source.mkdir(parents=True, exist_ok=True)
    for case in todo:
        mask = Image.open(args.work / "out" / _slug(alpha_from) / f"{case.name}.png").getchannel("A")
        stamp = hashlib.sha256(case.composite.read_bytes() + mask.tobytes()).hexdigest()
        if stamps.get(case.name, {}).get("stamp") == stamp and (dest / f"{case.name}.png").is_file():
            seconds[case.name] = stamps[case.name]["seconds"]
            continue
        os.link(case.composite, source / f"{case.name}.png")
        mask.save(source / f"{case.name}.mask.png")
        stamps[case.name] = {"stamp": stamp}
    if any(source.glob("*.mask.png")):
        run = subprocess.run([str(python), str(common.BENCH / "edges_peers.py"), kind, str(source), str(dest)],
                             capture_output=True, text=True, check=True)
        for line in run.stdout.splitlines():
            if not line.startswith("{"):  # rembg and numba print their own lines
                continue
            record = json.loads(line)
            if "name" in record:
                stamps[record["name"]]["seconds"] = record["seconds"]
                seconds[record["name"]] = record["seconds"]
            else:
                stamps["_peak_rss_mb"] = record["peak_rss_mb"]
        stamps_path.write_text(json.dumps(stamps, indent=1))
    rows = []
    for case in todo:
        image = Image.open(dest / f"{case.name}.png")
        rows.append({"case": case.name, "seconds": seconds.get(case.name), "mp": case.megapixels,
                     **scores(image, case)})
    return rows


# --------------------------------------------------------------------------- memory


def _load(server: common.Server, data: bytes, clients: int, each: int, refine: bool, decontaminate: bool) -> None:
    errors: list[str] = []

    def client() -> None:
        for _ in range(each):
            try:
                cut(server, data, refine, decontaminate)
            except (RuntimeError, requests.RequestException) as exc:
                errors.append(str(exc)[:120])

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        server.notes.append(f"{len(errors)} failed requests, e.g. {errors[0]}")


def twelve_megapixels(case: Case) -> bytes:
    """A composite scaled up to 4032x3024 (a 12 MP phone photo's size), as a JPEG at quality 92."""
    image = ImageOps.fit(Image.open(case.composite).convert("RGB"), (4032, 3024), Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=92)
    return buffer.getvalue()


def memory_run(args: argparse.Namespace, cases: list[Case]) -> list[dict]:
    """Fresh server per (setting, variant): sequential requests, then 8 clients; whole-server peaks."""
    settings = {"1 MP (MAX_DIMENSION=1024, deployed)": ({}, [c.composite.read_bytes() for c in cases[:6]]),
                "12 MP (MAX_DIMENSION=4096)": ({"MAX_DIMENSION": "4096"}, [twelve_megapixels(cases[0])])}
    rows = []
    for setting, (env, photos) in settings.items():
        for variant in (OFF, DEFAULTS):
            refine, decontaminate = VARIANTS[variant]
            with deployed_server("memory", args.model_dir, args.port + 1, **env) as server:
                for data in photos:
                    cut(server, data, refine, decontaminate)
                sequential = whole_peak_mb(server)
                _load(server, photos[0], 8, 2, refine, decontaminate)
                server.check_worker()
                rows.append({"setting": setting, "variant": variant, "sequential_mb": sequential,
                             "clients8_mb": whole_peak_mb(server), "notes": server.notes})
            print(f"memory {setting} {_slug(variant)}: {rows[-1]}", file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------- report


def _mean(rows: list[dict], key: str) -> float:
    return float(np.mean([row[key] for row in rows]))


def table(results: dict, peers: dict, memory: list[dict], timing: dict) -> str:
    peaks = {(row["variant"], row["setting"].split()[0]): row for row in memory}
    lines = ["| | alpha error in band (bias) | visible colour error | recomposite error | extra time | "
             "peak MB, 1 MP: sequential / 8 clients | peak MB, 12 MP: sequential / 8 clients |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rows in results.items():
        extra = "-"
        if name in timing and name != OFF:
            extra = f"{timing[name]['extra_s_per_mp']:+.3f} s/MP ({(timing[name]['ratio'] - 1) * 100:+.0f} %)"
        mem = [f"{peaks[(name, s)]['sequential_mb']:.0f} / {peaks[(name, s)]['clients8_mb']:.0f}"
               if (name, s) in peaks else "-" for s in ("1", "12")]
        lines.append(f"| {name} | {_mean(rows, 'alpha_err'):.3f} ({_mean(rows, 'bias'):+.3f}) | "
                     f"{_mean(rows, 'colour_err'):.2f} | {_mean(rows, 'recomposite_err'):.2f} | {extra} | "
                     f"{mem[0]} | {mem[1]} |")
    for name, rows in peers.items():
        if not rows:
            continue
        timed = [row for row in rows if row["seconds"] is not None]
        extra = f"{statistics.median(row['seconds'] / row['mp'] for row in timed):.2f} s/MP in-process" \
            if timed else "-"
        lines.append(f"| {name} ({len(rows)} composites) | {_mean(rows, 'alpha_err'):.3f} "
                     f"({_mean(rows, 'bias'):+.3f}) | {_mean(rows, 'colour_err'):.2f} | "
                     f"{_mean(rows, 'recomposite_err'):.2f} | {extra} | - | - |")
        if len(rows) < len(results[DEFAULTS]):  # the defaults on the same composites, to compare with
            same = {row["case"] for row in rows}
            ours = [row for row in results[DEFAULTS] if row["case"] in same]
            lines.append(f"| the defaults on the same {len(ours)} composites | {_mean(ours, 'alpha_err'):.3f} "
                         f"({_mean(ours, 'bias'):+.3f}) | {_mean(ours, 'colour_err'):.2f} | "
                         f"{_mean(ours, 'recomposite_err'):.2f} | | | |")
    return "\n".join(lines)


def worse_than_off(results: dict[str, list[dict]]) -> str:
    """Per variant and error, the composites it makes worse than both off (paired, by any amount)."""
    base = {row["case"]: row for row in results[OFF]}
    lines = []
    for name, rows in results.items():
        if name == OFF:
            continue
        for key, label in SCORES.items():
            deltas = sorted(((row[key] - base[row["case"]][key], row["case"]) for row in rows), reverse=True)
            worse = [f"{case} {delta:+.4f}" for delta, case in deltas if delta > 0]
            lines.append(f"- {name}, {label}: {len(worse)} of {len(rows)}" + (f" ({', '.join(worse)})" if worse else ""))
    return "\n".join(lines)


def by_background(results: dict[str, list[dict]]) -> str:
    """Each row's three errors per background, on the composites it has."""
    lines = []
    for name, rows in results.items():
        parts = []
        for background in BACKGROUNDS:
            mine = [row for row in rows if row["case"].endswith("." + background)]
            if mine:
                parts.append(f"{background} ({len(mine)}) {_mean(mine, 'alpha_err'):.3f} / "
                             f"{_mean(mine, 'colour_err'):.2f} / {_mean(mine, 'recomposite_err'):.2f}")
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)


def upscaled_table(results: dict[str, list[dict]]) -> str:
    """The upscaled phase's errors, and its request seconds per MP (median; paired against both off)."""
    base = {row["case"]: row for row in results[OFF]}
    lines = ["| at 4096 px | alpha error in band (bias) | visible colour error | recomposite error | 0.5 contour IoU "
             "in band | request s/MP (median) | extra s/MP against both off (paired median) |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, rows in results.items():
        extra = statistics.median((row["seconds"] - base[row["case"]]["seconds"]) / row["mp"] for row in rows)
        lines.append(f"| {name} | {_mean(rows, 'alpha_err'):.3f} ({_mean(rows, 'bias'):+.3f}) | "
                     f"{_mean(rows, 'colour_err'):.2f} | {_mean(rows, 'recomposite_err'):.2f} | "
                     f"{_mean(rows, 'contour_iou'):.4f} | {statistics.median(row['seconds'] / row['mp'] for row in rows):.3f} | "
                     + (f"{extra:+.3f} |" if name != OFF else "- |"))
    return "\n".join(lines)


PHASES = ("quality", "peers", "fidelity", "upscaled", "timing", "memory")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/m17"),
                        help="a folder holding isnet-general-tiny.onnx and its .sha256")
    parser.add_argument("--port", type=int, default=8210,
                        help="the quality server's port; memory servers use +1, the timing server +2, fidelity +3 to +5, "
                             "upscaled +6")
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench-edges"), help="composites, cutouts, peer cache")
    parser.add_argument("--limit", type=int, help="only the first N portraits (3 composites each)")
    parser.add_argument("--phases", default=",".join(PHASES),
                        help="which of quality, peers, fidelity, upscaled, timing, memory to run (default all); without "
                             "quality, "
                             "the cutouts an earlier run left in --work are scored")
    parser.add_argument("--rounds", type=int, default=3, help="timing: passes over the composites")
    parser.add_argument("--timing-composites", type=int, default=6, help="timing: the first N composites")
    parser.add_argument("--pymatting-venv", default=PEERS["pymatting"], help="a virtualenv with pymatting")
    parser.add_argument("--rembg-venv", default=PEERS["rembg-a"], help="a virtualenv with rembg[cpu]==2.0.86")
    parser.add_argument("--rembg-limit", type=int, help="rembg -a on the first N composites only")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--shared", type=Path, default=common.SHARED,
                        help="the shared folder with fixtures/ (default: ../shared beside the repository)")
    args = parser.parse_args()
    phases = {phase.strip() for phase in args.phases.split(",") if phase.strip()}
    if phases - set(PHASES):
        raise SystemExit(f"unknown phases {sorted(phases - set(PHASES))}; use {', '.join(PHASES)}")
    common.SHARED = args.shared
    if common.tiny_model(args.model_dir) is None:
        raise SystemExit(f"{args.model_dir} holds no isnet-general-tiny.onnx (+ .sha256); build one (docs/models.md)")
    started_load = common.loadavg()
    cases = composites(args.work, args.limit)
    if "quality" in phases:
        results = quality_run(args, cases)
    elif (args.work / "out" / _slug(OFF)).is_dir():
        results = saved_results(args, cases)
    else:  # fidelity or upscaled on their own
        results = {}
    peers: dict[str, list[dict]] = {}
    if "peers" in phases:
        peers["pymatting estimate_foreground_ml on the service's mask"] = peer_run(args, "pymatting", cases, OFF)
        peers["pymatting estimate_foreground_ml on the refined alpha"] = peer_run(args, "pymatting", cases,
                                                                                  "refine only")
        peers["rembg 2.0.86 -a on the service's mask"] = peer_run(args, "rembg-a", cases, OFF)
    fidelity = fidelity_run(args) if "fidelity" in phases else {}
    upscale = upscaled_run(args) if "upscaled" in phases else {}
    timing = timing_run(args, cases) if "timing" in phases else {}
    memory = memory_run(args, cases) if "memory" in phases else []
    print(f"{common.command_line()}\n{json.dumps(common.machine())}\nload average at start {started_load}, "
          f"at end {common.loadavg()}; {len(cases)} composites, {sum(c.megapixels for c in cases) / len(cases):.2f} "
          "MP on average\n")
    if results:
        print(table(results, peers, memory, timing))
    if timing:
        print(f"\nTiming: {timing[OFF]['requests']} requests per variant at the deployed MAX_DIMENSION (1024), "
              "median seconds: " + ", ".join(f"{_slug(name)} {row['median_s']:.3f}" for name, row in timing.items()))
    if results:
        print("\nComposites each variant makes worse than both off, per error (paired), and by how much:")
        print(worse_than_off(results))
        print("\nBy background, alpha / colour / recomposite error:")
        print(by_background({**results, **{name: rows for name, rows in peers.items() if rows}}))
    if upscale:
        print(f"\nUpscaled to a {UPSCALE_SIDE} px long side (MAX_DIMENSION={UPSCALE_SIDE}), {len(upscale[OFF])} "
              "composites:\n")
        print(upscaled_table(upscale))
        print(f"\nComposites each variant makes worse than both off at {UPSCALE_SIDE} px:")
        print(worse_than_off(upscale))
        print(by_background(upscale))
    for model, rows in fidelity.items():
        print(f"\nFidelity of {model}, IoU of alpha > 0.5 against its reference masks on the fixtures: " + ", ".join(
            f"{label} {np.mean(values):.4f} (min {np.min(values):.4f})" for label, values in rows.items()))
    for row in memory:
        if row["notes"]:
            print(f"memory {row['setting']} {row['variant']}: {'; '.join(row['notes'])}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": common.machine(), "results": results, "peers": peers,
                                         "timing": timing, "memory": memory, "fidelity": fidelity,
                                         "upscaled": upscale}, indent=1))


if __name__ == "__main__":
    main()
