"""Every environment variable the service reads, parsed and validated once at start-up."""
from __future__ import annotations

import os
import re
import resource
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, TypeVar

from platformdirs import user_cache_dir

from app.cpus import available_cpus
from app.services.model_store import CATALOGUE, REMBG_RELEASES

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")
ALLOWED_EXTENSIONS: tuple[str, ...] = ("png", "jpg", "jpeg", "gif", "bmp", "tiff", "tif", "webp")


N = TypeVar("N", int, float)


class ConfigError(ValueError):
    """A bad environment value; the message names the variable so start-up can say what to fix."""


def _number(env: Mapping[str, str], name: str, default: N, low: N, high: N) -> N:
    """A whole number or a float (by the default's type) within [low, high]."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    kind = type(default)
    try:
        value = kind(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a {'whole number' if kind is int else 'number'}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range ({low}..{high})")
    return value


def _threads(env: Mapping[str, str]) -> int:
    """ORT_THREADS: a whole number, or `auto` for the CPUs this process may use (app.cpus)."""
    raw = env.get("ORT_THREADS", "").strip()
    if raw.lower() == "auto":
        return min(available_cpus(), 64)
    try:
        return _number(env, "ORT_THREADS", 1, 1, 64)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; use a number of threads or auto") from None


def _dir(env: Mapping[str, str], name: str, default: Path) -> Path:
    raw = env.get(name, "").strip()
    path = Path(raw).expanduser() if raw else default
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{name}={str(path)!r} cannot be created: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"{name}={str(path)!r} is not writable")
    return path


def _flag(env: Mapping[str, str], name: str) -> bool:
    """An on/off switch: 1/true/yes or 0/false/no (any case); unset is off."""
    raw = env.get(name, "").strip().lower()
    if raw not in ("", "0", "1", "true", "false", "yes", "no"):
        raise ConfigError(f"{name}={raw!r} must be 1 or 0")
    return raw in ("1", "true", "yes")


def _url(env: Mapping[str, str], name: str, default: str) -> str:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if not raw.startswith(("http://", "https://")):
        raise ConfigError(f"{name}={raw!r} must be an http:// or https:// URL")
    return raw


_ORIGIN = re.compile(r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


def _origins(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """`*`, or comma-separated origins exactly as a browser sends them (scheme://host[:port], no path)."""
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    if raw == "*":
        return ("*",)
    origins = tuple(part.strip().rstrip("/") for part in raw.split(",") if part.strip())
    for origin in origins:
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(f"{name}: {origin!r} is not an origin like https://app.example.com "
                              "or http://localhost:3000")
    return origins


def _spool_max_mb(env: Mapping[str, str], max_file_size_mb: int) -> int:
    """SPOOL_MAX_MB: room on disk for request bodies in flight; at least one whole request must fit."""
    value = _number(env, "SPOOL_MAX_MB", 256, 1, 1_000_000)
    needed = -(-Config(max_file_size_mb=max_file_size_mb).max_request_bytes // (1024 * 1024))
    if value < needed:
        raise ConfigError(f"SPOOL_MAX_MB={value} cannot hold one upload of MAX_FILE_SIZE_MB={max_file_size_mb} "
                          f"(as base64 with its form, {needed} MB); use {needed} or more")
    return value


# The front's numeric settings other than SPOOL_MAX_MB: variable -> (low, high); each default is the Config
# field of the same name in lower case.
FRONT_RANGES: dict[str, tuple[float, float]] = {
    "HEADER_TIMEOUT_S": (0.1, 600.0), "BODY_TIMEOUT_S": (0.1, 3600.0),
    "SEND_TIMEOUT_S": (0.1, 3600.0), "BODY_MEMORY_MB": (1, 65536), "RESPONSE_MEMORY_MB": (1, 65536),
    "SPOOL_WAIT_S": (0.0, 600.0),
}


def _front(env: Mapping[str, str], defaults: "Config") -> dict[str, int | float]:
    """The FRONT_RANGES settings as Config keyword arguments, each of its default's type."""
    settings: dict[str, int | float] = {}
    for name, (low, high) in FRONT_RANGES.items():
        default = getattr(defaults, name.lower())
        settings[name.lower()] = _number(env, name, default, type(default)(low), type(default)(high))
    return settings


# MAX_CONNECTIONS' default (connection_bound): enough to hold a flood up to the worker's open-file limit idle,
# so that it is recycled by the header deadline rather than displaced (and reconnected) twice a second.
# An idle connection costs the worker about 6.1 KB (10,000 opened by hand: 70 -> 131 MB) and the kernel its
# socket (slab, which a cgroup v2 container is charged for; docs/operations.md); the default lets
# connections hold at most CONNECTIONS_MEMORY_MB of the two together.
CONNECTION_BYTES = 12 * 1024
CONNECTIONS_MEMORY_MB = 192
# Files the worker keeps open besides connections, with room to spare: 15 measured after an upload (the
# listener, its epoll, the log, pipes, onnxruntime's telemetry database, /dev/null; docs/operations.md).
FD_RESERVE = 128
# The front (app/front.py): a request body up to this size may stay in memory (within BODY_MEMORY_MB); a larger
# one is spooled to a temp file of its own (as is a smaller one when that total is full).
BODY_IN_MEMORY_BYTES = 512 * 1024
# The app, once the front hands it the body: an uploaded file part, an image_url download or a decoded
# image_file_b64 image up to this size is held in memory, a larger one in an anonymous temp file in
# UPLOAD_FOLDER (werkzeug's own threshold for form files).
UPLOAD_IN_MEMORY_BYTES = 500 * 1024
MIN_CONNECTIONS = 10


# Where the hard open-file limit is unlimited, the soft one is raised this far (Linux's default nr_open).
NOFILE_CEILING = 1_048_576


def open_files_limit() -> int:
    """This process's soft RLIMIT_NOFILE: a gunicorn worker inherits it from the master."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1_000_000_000 if soft == resource.RLIM_INFINITY else soft


def raise_open_files_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns (before, after).

    Called once by the front's worker before the app reads its settings, so that MAX_CONNECTIONS' default
    is derived from what the hard limit allows: a container started at a soft limit of 1,024 (Docker
    Engine 25+ on systemd) would otherwise get a bound of 384. nginx (worker_rlimit_nofile) and Go's runtime
    do the same. The soft 1,024 protects select(), which cannot watch higher descriptors; the front uses
    epoll (asyncio's selector on Linux). The hard limit stays the operator's (ulimit -n, --ulimit nofile).
    """
    before = open_files_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = NOFILE_CEILING if hard == resource.RLIM_INFINITY else hard
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (OSError, ValueError):
            pass  # a kernel nr_open below the hard limit: keep the soft limit
    return before, open_files_limit()


def connection_bound(fd_limit: int, spool_max_mb: int) -> int:
    """MAX_CONNECTIONS' default: the open-file limit less the worker's own files and one per spooled body,
    capped by CONNECTIONS_MEMORY_MB. It stays below the fd limit because asyncio's accept, on EMFILE, stops
    accepting for a second (selector_events, ACCEPT_RETRY_DELAY), health probes included."""
    by_files = fd_limit - fd_reserve(spool_max_mb)
    return max(MIN_CONNECTIONS, min(by_files, CONNECTIONS_MEMORY_MB * 1024 * 1024 // CONNECTION_BYTES))


def fd_reserve(spool_max_mb: int) -> int:
    """Open files the worker needs besides its connections: its own, plus one per body the spool can hold."""
    return FD_RESERVE + spool_max_mb * 1024 * 1024 // BODY_IN_MEMORY_BYTES


def _max_connections(env: Mapping[str, str], fd_limit: int, spool_max_mb: int) -> int:
    """MAX_CONNECTIONS, or connection_bound; an explicit value must leave the worker its reserve of files."""
    if not env.get("MAX_CONNECTIONS", "").strip():
        return connection_bound(fd_limit, spool_max_mb)
    value = _number(env, "MAX_CONNECTIONS", 2000, MIN_CONNECTIONS, 1_000_000)
    room = fd_limit - fd_reserve(spool_max_mb)
    if value > room:
        raise ConfigError(f"MAX_CONNECTIONS={value} does not fit the open-file limit ({fd_limit}, less "
                          f"{fd_reserve(spool_max_mb)} for the worker's own files and SPOOL_MAX_MB={spool_max_mb}'s "
                          f"temp files): use at most {room}, or raise the limit (ulimit -n)")
    return value


def base64_length(size: int) -> int:
    """Characters of base64 (with padding) that encode `size` bytes."""
    return (size + 2) // 3 * 4


@dataclass(frozen=True)
class Config:
    """Immutable settings; build one with Config.from_env()."""

    port: int = 5000
    flask_env: str = "production"
    upload_folder: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "pixport-uploads")
    processed_folder: Path = field(default_factory=lambda: Path(tempfile.gettempdir()) / "pixport-processed")
    model_dir: Path = field(default_factory=lambda: Path(user_cache_dir("pixport-isnet-tiny")))
    model_path: Path | None = None
    bg_model: str | None = None
    model_base_url: str = REMBG_RELEASES
    isnet_source: Path | None = None
    ort_threads: int = 1
    ort_arena: bool = False
    # Inferences run at once, each on ort_threads threads (docs/performance.md, "What to set on Railway").
    inference_slots: int = 1
    # Nice levels added to the threads that run inference (onnxruntime's pool and each request thread inside
    # its slot) over the process's: the event loop and the health threads keep theirs and win the CPU.
    inference_nice: int = 10
    max_file_size_mb: int = 8
    max_dimension: int = 1024
    max_pixels: int = 40_000_000
    max_decode_mb: int = 300
    queue_timeout_s: float = 30.0
    max_queue: int = 8
    api_key: str | None = None
    metrics: bool = False
    preload_model: bool = False
    cors_origins: tuple[str, ...] = ()
    image_url_allow_private: bool = False
    image_url_timeout_s: float = 10.0
    # The HTTP front (app/front.py, docs/operations.md "Slow clients"): bounds no client can push past.
    # Connections served before a new one displaces the longest-waiting one (or gets 503); from_env derives
    # it from the real fd_limit; this default is connection_bound(fd_limit, spool_max_mb) of the defaults.
    max_connections: int = 384
    # The worker's open-file limit (RLIMIT_NOFILE soft), read once at start-up.
    fd_limit: int = 1024
    # Deadlines: connect -> complete head; head -> whole body (408); a full send buffer -> drained (abort).
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    send_timeout_s: float = 30.0
    # Totals for all connections together: bodies in memory, bodies spooled to disk, responses queued.
    body_memory_mb: int = 16
    spool_max_mb: int = 256
    response_memory_mb: int = 32
    # An upload that does not fit the spool waits this long for room, unread, before its 503.
    spool_wait_s: float = 5.0

    @property
    def max_content_length(self) -> int:
        """The limit for one image, however it arrives (file part, image_url body, decoded image_file_b64)."""
        return self.max_file_size_mb * 1024 * 1024

    @property
    def max_decode_bytes(self) -> int:
        return self.max_decode_mb * 1024 * 1024

    @property
    def max_form_field_bytes(self) -> int:
        """A text field may hold a whole image as base64 (plus a data: URL prefix)."""
        return base64_length(self.max_content_length) + 1024

    @property
    def max_request_bytes(self) -> int:
        """A whole request: the larger of an image file and its base64, plus the form's own overhead."""
        return self.max_form_field_bytes + 64 * 1024

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Config":
        """Read and validate the environment; raises ConfigError naming the bad variable."""
        env = os.environ if env is None else env
        defaults = cls()
        bg_model = env.get("BG_MODEL", "").strip() or None
        if bg_model is not None and bg_model not in CATALOGUE:
            raise ConfigError(f"BG_MODEL={bg_model!r} is not one of {', '.join(CATALOGUE)}")
        model_path_raw = env.get("MODEL_PATH", "").strip()
        model_path = Path(model_path_raw).expanduser() if model_path_raw else None
        if model_path is not None and not model_path.is_file():
            raise ConfigError(f"MODEL_PATH={model_path_raw!r} is not a file")
        isnet_source_raw = env.get("ISNET_SOURCE", "").strip()
        isnet_source = Path(isnet_source_raw).expanduser() if isnet_source_raw else None
        if isnet_source is not None and not isnet_source.is_file():
            raise ConfigError(f"ISNET_SOURCE={isnet_source_raw!r} is not a file")
        flask_env = env.get("FLASK_ENV", "").strip().lower() or "production"
        max_file_size_mb = _number(env, "MAX_FILE_SIZE_MB", 8, 1, 100)
        spool_max_mb = _spool_max_mb(env, max_file_size_mb)
        fd_limit = open_files_limit()
        if flask_env not in ("production", "development", "testing"):
            raise ConfigError(f"FLASK_ENV={flask_env!r} must be production, development or testing")
        return cls(
            port=_number(env, "PORT", 5000, 1, 65535),
            flask_env=flask_env,
            upload_folder=_dir(env, "UPLOAD_FOLDER", defaults.upload_folder),
            processed_folder=_dir(env, "PROCESSED_FOLDER", defaults.processed_folder),
            model_dir=_dir(env, "MODEL_DIR", defaults.model_dir),
            model_path=model_path,
            bg_model=bg_model,
            isnet_source=isnet_source,
            model_base_url=_url(env, "MODEL_BASE_URL", REMBG_RELEASES),
            ort_threads=_threads(env),
            ort_arena=_flag(env, "ORT_ARENA"),
            inference_slots=_number(env, "INFERENCE_SLOTS", 1, 1, 8),
            inference_nice=_number(env, "INFERENCE_NICE", 10, 0, 19),
            max_file_size_mb=max_file_size_mb,
            max_dimension=_number(env, "MAX_DIMENSION", 1024, 64, 8192),
            max_pixels=_number(env, "MAX_PIXELS", 40_000_000, 1_000_000, 400_000_000),
            max_decode_mb=_number(env, "MAX_DECODE_MB", 300, 16, 65536),
            queue_timeout_s=_number(env, "QUEUE_TIMEOUT_S", 30.0, 0.0, 600.0),
            max_queue=_number(env, "MAX_QUEUE", 8, 0, 1000),
            api_key=env.get("API_KEY", "").strip() or None,
            metrics=_flag(env, "METRICS"),
            preload_model=_flag(env, "PRELOAD_MODEL"),
            cors_origins=_origins(env, "CORS_ORIGINS"),
            image_url_allow_private=_flag(env, "IMAGE_URL_ALLOW_PRIVATE"),
            image_url_timeout_s=_number(env, "IMAGE_URL_TIMEOUT_S", 10.0, 0.1, 60.0),
            spool_max_mb=spool_max_mb,
            max_connections=_max_connections(env, fd_limit, spool_max_mb),
            fd_limit=fd_limit,
            **_front(env, defaults),
        )
