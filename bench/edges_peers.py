"""The reference estimators for bench/edges.py, run in their own virtualenvs (never imported by the service).

    <venv>/bin/python bench/edges_peers.py pymatting IN_DIR OUT_DIR
    <venv>/bin/python bench/edges_peers.py rembg-a IN_DIR OUT_DIR

IN_DIR holds NAME.png (the composite, RGB) and NAME.mask.png (the alpha or mask to start from, L). For each,
OUT_DIR gets NAME.png, an RGBA cutout: `pymatting` keeps the given alpha and estimates the foreground colours
with pymatting's estimate_foreground_ml (what rembg's `decontaminate` does); `rembg-a` runs rembg 2.0.86's
`-a` path (bg.alpha_matting_cutout: trimap from the mask at rembg's CLI defaults 240/10/10, closed-form
alpha, then estimate_foreground_ml) on the given mask. Prints one JSON line per image with its seconds,
after a warm-up on the first image (numba compiles on first use), and the process's peak RSS at the end.
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image


def pymatting_cutout(image: Image.Image, mask: Image.Image) -> Image.Image:
    from pymatting import estimate_foreground_ml

    alpha = np.asarray(mask, dtype=np.float64) / 255.0
    foreground = estimate_foreground_ml(np.asarray(image, dtype=np.float64) / 255.0, alpha)
    rgba = np.dstack([np.clip(foreground * 255 + 0.5, 0, 255).astype(np.uint8), np.asarray(mask)])
    return Image.fromarray(rgba, "RGBA")


def rembg_a_cutout(image: Image.Image, mask: Image.Image) -> Image.Image:
    """rembg.bg.remove's `-a` branch: alpha matting, and its own fallback when the trimap has no
    foreground or background (ValueError), the decontaminated cutout on the mask."""
    from rembg.bg import alpha_matting_cutout, decontaminate_cutout

    try:
        return alpha_matting_cutout(image, mask, 240, 10, 10)
    except ValueError:
        return decontaminate_cutout(image, mask)


def main() -> None:
    kind, source, dest = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    cut = {"pymatting": pymatting_cutout, "rembg-a": rembg_a_cutout}[kind]
    dest.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name[: -len(".mask.png")] for p in source.glob("*.mask.png"))
    if names:
        first = Image.open(source / f"{names[0]}.png").convert("RGB")
        cut(first.crop((0, 0, 64, 64)), Image.open(source / f"{names[0]}.mask.png").convert("L").crop((0, 0, 64, 64)))
    for name in names:
        image = Image.open(source / f"{name}.png").convert("RGB")
        mask = Image.open(source / f"{name}.mask.png").convert("L")
        started = time.perf_counter()
        result = cut(image, mask)
        seconds = time.perf_counter() - started
        result.save(dest / f"{name}.png", compress_level=1)
        print(json.dumps({"name": name, "seconds": round(seconds, 3), "pixels": image.size[0] * image.size[1]}),
              flush=True)
    print(json.dumps({"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


if __name__ == "__main__":
    main()
