"""Size of /remove's cutouts with the removed scene kept under alpha 0 (before issue 12) and cleared (now).

Not a server benchmark: it runs the app in-process (Flask test client, the bundled u2netp unless
BG_MODEL/MODEL_DIR say otherwise), takes each cutout's alpha, and encodes the same alpha over
(a) the photo's own colours, as the service did before, and (b) the service's response, with the
encoders the service used then and uses now. It also counts coloured pixels under alpha 0.

    python bench/cutout_size.py [IMAGES_DIR]     # default: tests/fixtures/images
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import create_app, imaging  # noqa: E402


def leaked(data: bytes) -> int:
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    return int(pixels[..., :3][pixels[..., 3] == 0].any(axis=1).sum())


def old_webp(image: Image.Image) -> bytes:
    """The encoder before issue 12: lossy colour, lossless alpha, libwebp's default clean-up."""
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=90, alpha_quality=100, method=4)
    return buffer.getvalue()


def main() -> None:
    folder = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1] / "tests/fixtures/images"
    scratch = tempfile.mkdtemp()
    env = {"FLASK_ENV": "testing", "MODEL_DIR": os.environ.get("MODEL_DIR", scratch), "UPLOAD_FOLDER": scratch,
           "PROCESSED_FOLDER": scratch, **({"BG_MODEL": os.environ["BG_MODEL"]} if "BG_MODEL" in os.environ else {})}
    client = create_app(env).test_client()
    print("| photo | size | PNG before | PNG now | WebP before (leaking px) | WebP now (leaking px) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for path in sorted(folder.glob("*.jpg")):
        data = path.read_bytes()
        response = client.post("/api/bg/remove", data={"file": (io.BytesIO(data), path.name)})
        now = Image.open(io.BytesIO(response.data))
        now.load()
        photo = imaging.decode(imaging.open_checked(data, 40_000_000), 1024).rgb
        before = photo.copy()
        before.putalpha(now.getchannel("A"))
        png_before, png_now = imaging.encode(before, "PNG"), response.data
        webp_before, webp_now = old_webp(before), imaging.encode(now, "WEBP")
        print(f"| {path.stem} | {now.width}x{now.height} | {len(png_before):,} B ({leaked(png_before):,} px) "
              f"| {len(png_now):,} B ({leaked(png_now)} px) | {len(webp_before):,} B ({leaked(webp_before):,}) "
              f"| {len(webp_now):,} B ({leaked(webp_now)}) |")


if __name__ == "__main__":
    main()
