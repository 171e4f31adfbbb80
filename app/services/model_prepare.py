"""Preparing isnet-general-tiny: from a local IS-Net file or a pooch download, in a child process.

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


def require_build_tools() -> None:
    """ModelUnavailable, saying what to do, when onnx is missing (the Docker image serves without it)."""
    if importlib.util.find_spec("onnx") is None:
        raise ModelUnavailable(
            f"{model_store.TINY} is not in MODEL_DIR and cannot be built here: onnx is not installed (the "
            "Docker image ships without it). Build the image with BG_MODEL_BUILD=isnet-general-tiny, or "
            f"pip install -r requirements-build.txt and run `flask --app app_isnet_tiny prepare-model {model_store.TINY}`"
        )


def prepare_tiny(model_dir: Path, source: Path | None, base_url: str = model_store.REMBG_RELEASES) -> ModelFile:
    """Build isnet-general-tiny into model_dir in this process (the CLI and the child use this)."""
    require_build_tools()
    from app.services.model_build import ModelBuildError, build_isnet_tiny

    spec = model_store.CATALOGUE[model_store.TINY]
    if source is None:
        try:
            source = model_store.fetch_into_dir(model_store.CATALOGUE["isnet-general-use"], model_dir, base_url).path
        except ModelUnavailable as exc:
            raise ModelUnavailable(
                f"{exc}; to build without downloading, set ISNET_SOURCE (or prepare-model --source) to a local "
                "IS-Net general-use .onnx file, fp32 or fp16 (docker build: --build-arg ISNET_SOURCE=model-src/<file>)"
            ) from exc
    dest = model_dir / spec.filename
    log.info("building %s from %s", spec.name, source)
    try:
        build_isnet_tiny(source, dest)
    except ModelBuildError as exc:
        raise ModelUnavailable(f"cannot build {spec.name} from {source}: {exc}") from exc
    return ModelFile(spec, dest, "built")


def prepare_tiny_in_child(model_dir: Path, source: Path | None, base_url: str) -> ModelFile:
    """Build in a child process under MODEL_DIR's lock; returns the verified file or raises ModelUnavailable."""
    spec = model_store.CATALOGUE[model_store.TINY]
    lock_path = model_dir / f"{spec.filename}.lock"
    with lock_path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process builds it
        try:
            existing = model_store.find_local(spec, model_dir)
            if existing is not None:
                return existing
            require_build_tools()
            command = [sys.executable, "-m", "app.services.model_prepare", "--model-dir", str(model_dir),
                       "--base-url", base_url]
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
    parser = argparse.ArgumentParser(description="Build isnet-general-tiny into a model directory.")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--source", type=Path)
    parser.add_argument("--base-url", default=model_store.REMBG_RELEASES)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        found = prepare_tiny(args.model_dir, args.source, args.base_url)
    except ModelUnavailable as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{found.spec.name}: {found.path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
