"""Worker peak RSS for one large image sent as `file`, as `image_file_b64` and as `image_url`.

Each source gets a fresh production server (gunicorn + gunicorn.conf.py, the bundled u2netp,
IMAGE_URL_ALLOW_PRIVATE=1 so it may fetch from the loopback file server this script starts). After
a small warm-up request (the model load), one request with a 5.5 MB JPEG (7.3 MB as base64, under
the 8 MB limit) is sent; the worker's VmHWM is read afterwards.

    python bench/experiments/source_memory.py [--port 6200] [--image-port 6201]
"""
from __future__ import annotations

import argparse
import base64
import functools
import http.server
import io
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from common import ROOT, bundled_u2netp, service_server  # noqa: E402


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def big_jpeg() -> bytes:
    """A fixture photo upscaled to 4000x2668 with grain, so the JPEG is large (5.5 MB)."""
    photo = Image.open(ROOT / "tests/fixtures/images/animal-1.jpg").convert("RGB").resize((4000, 2668))
    grain = np.random.default_rng(0).integers(-24, 24, (2668, 4000, 3))
    noisy = Image.fromarray(np.clip(np.asarray(photo, dtype=np.int16) + grain, 0, 255).astype(np.uint8))
    buffer = io.BytesIO()
    noisy.save(buffer, "JPEG", quality=93)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6200)
    parser.add_argument("--image-port", type=int, default=6201)
    args = parser.parse_args()
    data = big_jpeg()
    folder = Path(tempfile.mkdtemp(prefix="bench-source-"))
    (folder / "big.jpg").write_bytes(data)
    handler = functools.partial(Quiet, directory=str(folder))
    files = http.server.ThreadingHTTPServer(("127.0.0.1", args.image_port), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    small = (ROOT / "tests/fixtures/images/car-1.jpg").read_bytes()
    print(f"image: {len(data):,} B JPEG, 4000x2668; base64 {len(base64.b64encode(data)):,} characters")
    print("| source | status | worker VmHWM after warm-up | after the large request |")
    print("| --- | --- | --- | --- |")
    sources = {
        "file": lambda: {"files": {"file": ("big.jpg", data)}},
        "image_file_b64": lambda: {"files": {"image_file_b64": (None, base64.b64encode(data).decode())}},
        "image_url": lambda: {"data": {"image_url": f"http://127.0.0.1:{args.image_port}/big.jpg"}},
    }
    try:
        for name, request in sources.items():
            server = service_server(f"source-{name}", "u2netp", bundled_u2netp().parent, None)
            server.port = args.port
            server.env.update(PORT=str(args.port), IMAGE_URL_ALLOW_PRIVATE="1")
            with server:
                warm = requests.post(f"{server.base}/api/bg/remove", files={"file": ("car.jpg", small)}, timeout=120)
                warm.raise_for_status()
                before = server.memory()["worker_hwm_mb"]
                response = requests.post(f"{server.base}/api/bg/remove", timeout=120, **request())
                after = server.memory()["worker_hwm_mb"]
                server.check_worker()
                print(f"| {name} | {response.status_code} | {before:.1f} MB | {after:.1f} MB |"
                      + (f" {server.notes}" if server.notes else ""))
    finally:
        files.shutdown()
        files.server_close()


if __name__ == "__main__":
    main()
