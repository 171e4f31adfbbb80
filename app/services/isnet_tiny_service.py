"""IsnetTinyService: the process's one model session, inference one at a time, and memory figures.

The session is created lazily in a background thread so that /health and /status answer while a model
downloads, builds or loads. Inference is admitted through a bounded queue and a single-slot semaphore,
so the process never holds more than one full-size set of activations: its peak memory is one request's.
This module knows nothing of Flask.
"""
from __future__ import annotations

import logging
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable, Iterator

import numpy as np
import onnxruntime as ort
import psutil
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state
from PIL import Image

from app import model_io
from app.heap import release_memory_to_os
from app.config import Config
from app.cpus import lower_thread_priority
from app.errors import Busy, Unavailable
from app.services import model_store
from app.services.model_prepare import prepare_in_child
from app.services.model_store import ModelFile, ModelUnavailable

log = logging.getLogger(__name__)

ORT_ERRORS: tuple[type[Exception], ...] = (
    ort_state.Fail,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.RuntimeException,
)
RETRY_FAILED_AFTER_S = 30.0
LONG_OPERATION_RETRY_S = 30
HIGH_MEMORY_MB = 450.0


class ModelState(str, Enum):
    NOT_LOADED = "not_loaded"
    DOWNLOADING = "downloading"
    PREPARING = "preparing"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class Stats:
    inferences: int = 0
    last_inference_s: float | None = None
    load_seconds: float | None = None
    rejected_busy: int = 0


_DIRECTORIES = re.compile(r"(?<![\w:/.])(?:/[^\s/'\":]+)+/")


def without_paths(text: str) -> str:
    """Drop the directories of absolute paths (file names stay), so public errors name no server paths."""
    return _DIRECTORIES.sub("", text)


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


def peak_rss_mb() -> float | None:
    """VmHWM: the process's peak resident set since start (Linux only)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


# The NCHWc re-layout's reorder buffers cost 8 MB of peak on u2netp and 33 MB on isnet-general-tiny
# for no clear speed-up once buffer reuse is off (docs/performance.md); memory is the budget that matters.
# With the arena (speed first) it stays on: fp32 u2netp runs ~20 % faster with it, int8 IS-Net the same.
DISABLED_OPTIMIZERS = ["NchwcTransformer"]


def create_session(path: str, threads: int, arena: bool = False, profile_prefix: str | None = None) -> ort.InferenceSession:
    """A lean CPU session: few threads; by default no arena, memory pattern or buffer reuse.

    Each of those three keeps activation buffers alive past their last use (docs/performance.md has the
    measurements): without them every tensor is freed as soon as its last consumer has run, and with
    glibc's mmap threshold lowered (tune_malloc) that memory goes straight back to the OS. The price is
    a fresh, zeroed mapping for every activation. `arena` (ORT_ARENA=1) trades memory for speed: the
    CPU arena, buffer reuse and the NCHWc layout recycle those mappings within a run
    (isnet-general-tiny ~25-40 % faster for ~75 MB more peak, u2netp ~2x for ~180 MB; docs/performance.md),
    and run_options() shrinks the arena back after every run.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.enable_cpu_mem_arena = arena
    options.enable_mem_pattern = False
    options.enable_mem_reuse = arena
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if profile_prefix is not None:  # bench/int8_peak.py: the deployed session, op by op
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    return ort.InferenceSession(
        path, sess_options=options, providers=["CPUExecutionProvider"],
        disabled_optimizers=[] if arena else DISABLED_OPTIMIZERS,
    )


def run_options(arena: bool) -> ort.RunOptions | None:
    """With the arena on: hand its freed chunks back to the OS at the end of every run."""
    if not arena:
        return None
    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


class IsnetTinyService:
    """One per process (see instance()); thread-safe."""

    _instance: "IsnetTinyService | None" = None
    _instance_lock = threading.Lock()
    eager = False  # set by preload(): the model is wanted loaded at all times, not on the first request

    def __init__(self, config: Config) -> None:
        self.config = config
        self._session: ort.InferenceSession | None = None
        self._file: ModelFile | None = None
        self._input_name = ""
        self._output_name = ""
        self._input_size = 0
        self._run_options = run_options(config.ort_arena)
        self._state = ModelState.NOT_LOADED
        self._reason: str | None = None
        self._failed_at = 0.0
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._loader: threading.Thread | None = None
        self._slot = threading.Semaphore(config.inference_slots)
        self._waiting = 0
        self._holders: set[int] = set()  # threads inside slot()
        self._running = 0  # slots held; guarded by _lock, like the two below
        self._clear_waiters: list[threading.Event] = []
        self._listeners: list[Callable[[float], None]] = []
        self.stats = Stats()

    @classmethod
    def instance(cls, config: Config) -> "IsnetTinyService":
        """The process-wide singleton; a new config (tests) replaces it."""
        with cls._instance_lock:
            if cls._instance is None or cls._instance.config is not config:
                cls._instance = cls(config)
            return cls._instance

    @property
    def model_name(self) -> str:
        if self._file is not None:
            return self._file.spec.name
        if self.config.bg_model:
            return self.config.bg_model
        return model_store.default_model_name(self.config.model_dir)

    @property
    def state(self) -> ModelState:
        return self._state

    @property
    def loaded(self) -> bool:
        return self._session is not None

    @property
    def queue_length(self) -> int:
        return self._waiting

    def describe(self) -> dict[str, Any]:
        """Model, source, state and reason for /status."""
        return {
            "name": self.model_name,
            "state": self._state.value,
            "source": self._file.source if self._file else None,
            "path": self._file.path.name if self._file else None,
            "input_size": self._input_size or None,
            "reason": self._reason,
            "load_seconds": self.stats.load_seconds,
        }

    def start_loading(self) -> None:
        """Kick off the background load unless it is running, done, or failed very recently."""
        with self._lock:
            if self._state == ModelState.READY or (self._loader is not None and self._loader.is_alive()):
                return
            if self._state == ModelState.FAILED and time.monotonic() - self._failed_at < RETRY_FAILED_AFTER_S:
                return
            self._state = ModelState.LOADING
            self._reason = None
            self._ready.clear()
            self._loader = threading.Thread(target=self._load, name="model-loader", daemon=True)
            self._loader.start()

    def preload(self) -> None:
        """Load the model now, in the background, instead of on the first request (PRELOAD_MODEL=1).

        The server answers at once; /health reports the load (503 until it is ready) and, being eager,
        asks start_loading() again on each probe, so a failed load is retried after its back-off.
        """
        self.eager = True
        self.start_loading()

    def _set_state(self, state: ModelState) -> None:
        self._state = state
        log.info("model %s: %s", self.model_name, state.value)

    def _resolve(self) -> ModelFile:
        config = self.config
        if config.model_path is not None:
            spec = model_store.CATALOGUE[config.bg_model] if config.bg_model else None
            return ModelFile(spec or model_store.CATALOGUE["u2netp"], config.model_path, "model_path")
        spec = model_store.CATALOGUE[config.bg_model or model_store.default_model_name(config.model_dir)]
        local = model_store.find_local(spec, config.model_dir)
        if local is not None:
            return local
        if spec.downloadable:
            self._set_state(ModelState.DOWNLOADING)
            return model_store.download(spec, config.model_dir, config.model_base_url)
        self._set_state(ModelState.PREPARING)
        source = config.isnet_source if spec.name == model_store.TINY else None
        return prepare_in_child(spec.name, config.model_dir, source, config.model_base_url)

    def _load(self) -> None:
        # This thread creates the session, and onnxruntime's pool threads inherit its nice value.
        lower_thread_priority(self.config.inference_nice)
        started = time.monotonic()
        try:
            found = self._resolve()
            self._set_state(ModelState.LOADING)
            session = create_session(str(found.path), self.config.ort_threads, self.config.ort_arena)
        except (ModelUnavailable, OSError, *ORT_ERRORS) as exc:
            reason = str(exc) if isinstance(exc, ModelUnavailable) else f"cannot load the model file: {exc}"
            log.error("model %s failed: %s", self.model_name, reason)
            self._reason = without_paths(reason)  # shown to clients by /status, /health and 503s
            self._failed_at = time.monotonic()
            self._set_state(ModelState.FAILED)
            self._ready.set()
            return
        model_input = session.get_inputs()[0]
        size = model_input.shape[-1] if isinstance(model_input.shape[-1], int) else found.spec.input_size
        if found.source == "model_path" and not self.config.bg_model:
            found = ModelFile(model_store.spec_for_input_size(size), found.path, found.source)
        self._input_name = model_input.name
        self._output_name = session.get_outputs()[0].name
        self._input_size = size
        self._file = found
        self._session = session
        self.stats.load_seconds = round(time.monotonic() - started, 3)
        self._set_state(ModelState.READY)
        self._ready.set()

    def wait_until_ready(self, timeout_s: float) -> None:
        """Block up to timeout_s for the model; 503 with Retry-After if it is still coming or has failed.

        A download or a build takes minutes, so while one runs the request is answered at once.
        """
        self.start_loading()
        deadline = time.monotonic() + timeout_s
        while self._state not in (ModelState.READY, ModelState.FAILED) and time.monotonic() < deadline:
            if self._state in (ModelState.DOWNLOADING, ModelState.PREPARING):
                raise Unavailable(f"the model {self.model_name} is {self._state.value}; try again shortly",
                                  retry_after=LONG_OPERATION_RETRY_S)
            self._ready.wait(0.05)
        if self._state == ModelState.FAILED:
            raise Unavailable(f"the model is unavailable: {self._reason}", retry_after=int(RETRY_FAILED_AFTER_S))
        if self._state != ModelState.READY:
            raise Unavailable(f"the model is {self._state.value}; try again shortly", retry_after=10)

    @contextmanager
    def _admitted(self) -> Iterator[None]:
        """The bounded queue: INFERENCE_SLOTS run, at most max_queue wait, each for at most queue_timeout_s.

        A clear() that arrives while requests run is carried out when the last of them leaves its slot,
        so the session never disappears under a running inference.
        """
        if not self._slot.acquire(blocking=False):
            with self._lock:
                if self._waiting >= self.config.max_queue:
                    self.stats.rejected_busy += 1
                    raise Busy("the server is busy; try again in a few seconds", retry_after=5)
                self._waiting += 1
            try:
                acquired = self._slot.acquire(timeout=self.config.queue_timeout_s)
            finally:
                with self._lock:
                    self._waiting -= 1
            if not acquired:
                self.stats.rejected_busy += 1
                raise Busy("the server is busy; try again in a few seconds", retry_after=5)
        with self._lock:
            self._running += 1
        try:
            yield
        finally:
            with self._lock:
                self._running -= 1
                waiters = []
                if not self._running:
                    waiters, self._clear_waiters = self._clear_waiters, []
                if waiters:
                    self._drop_session()
            self._slot.release()
            for waiter in waiters:
                waiter.set()

    @contextmanager
    def slot(self) -> Iterator[int]:
        """Wait for the model and for an inference slot; yields the model's input size.

        Callers decode the photo, call mask() and encode the answer inside it, so the process holds
        INFERENCE_SLOTS (default one) full-size requests at a time while the others wait holding only their
        (spooled) upload. A
        request whose model was cleared while it waited loads it again here rather than failing.
        """
        self.wait_until_ready(self.config.queue_timeout_s)
        with self._admitted():
            # For good: an unprivileged thread cannot lower its nice value again. Request threads run only
            # whole requests (app/front.py), so the event loop and the health threads keep their priority.
            lower_thread_priority(self.config.inference_nice)
            if self._session is None:
                self.wait_until_ready(self.config.queue_timeout_s)
            if self._session is None:
                raise Unavailable("the model was unloaded; try again", retry_after=1)
            me = threading.get_ident()
            self._holders.add(me)
            try:
                yield self._input_size
            finally:
                self._holders.discard(me)

    def mask(self, model_rgb: Image.Image, size: tuple[int, int]) -> Image.Image:
        """The subject's alpha mask (L) at `size`, from the model-size RGB input; call inside slot()."""
        if threading.get_ident() not in self._holders:
            raise RuntimeError("IsnetTinyService.mask() called outside slot()")
        session, spec = self._session, self._file.spec if self._file else None
        if session is None or spec is None:
            raise Unavailable("the model was unloaded; try again", retry_after=1)
        if model_rgb.size != (self._input_size, self._input_size):
            model_rgb = model_rgb.resize((self._input_size, self._input_size), Image.Resampling.LANCZOS)
        started = time.monotonic()
        tensor = model_io.model_input(model_rgb, spec.mean, spec.std)
        extra = (self._run_options,) if self._run_options is not None else ()
        prediction = session.run([self._output_name], {self._input_name: tensor}, *extra)[0]
        del tensor
        mask = model_io.mask_from_output(np.asarray(prediction), size)
        del prediction
        seconds = time.monotonic() - started
        with self._lock:  # INFERENCE_SLOTS > 1: several threads get here at once
            self.stats.inferences += 1
            self.stats.last_inference_s = round(seconds, 3)
        for listener in self._listeners:
            listener(seconds)
        return mask

    def add_inference_listener(self, listener: Callable[[float], None]) -> None:
        """Called with each inference's seconds (metrics use it; the service knows nothing of them)."""
        self._listeners.append(listener)

    def _drop_session(self) -> None:
        """Forget the session (call with _lock held); the next request loads it again."""
        self._session = None
        self._file = None
        self._input_size = 0
        self._state = ModelState.NOT_LOADED
        self._reason = None
        self._ready.clear()

    def clear(self) -> float:
        """Drop the session and return freed memory to the OS; returns MB freed (may be ~0).

        Waits for the running inference at most (not for the queue): queued requests reload the model.
        """
        before = rss_mb()
        with self._lock:
            if self._running:
                done: threading.Event | None = threading.Event()
                self._clear_waiters.append(done)
            else:
                done = None
                self._drop_session()
        if done is not None and not done.wait(self.config.queue_timeout_s):
            log.warning("clear_cache: the running inference did not finish in %.0f s", self.config.queue_timeout_s)
        release_memory_to_os()
        return max(0.0, before - rss_mb())
