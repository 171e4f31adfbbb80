"""Attacks on the HTTP front for bench/hostile.py --front: slowhttptest in every mode, and three socket floods.

Each attack runs in a process of its own (slowhttptest, or this file run as a script for a flood), so that its
CPU time is its own (read with wait4) and it can be pinned to a CPU, for a fixed time against a server while
a prober asks /api/bg/health every 0.25 s (a new connection each time, like a platform's health check; its
time is split into connect and first byte) and one ordinary upload is sent halfway through. After the
attack: how long until health answers within 1 s and THREADS requests at once all answer (no thread left
blocked), and how long until RSS is back within 60 MB of the idle baseline (at most 30 s). A sampler reads
the server's RSS and the bytes its worker holds open in UPLOAD_FOLDER (spooled bodies, anonymous files)
every 0.2 s.

    python bench/slow_attacks.py FLOOD_NAME BASE_URL CONNECTIONS   # one flood, until SIGTERM
"""
from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import requests

import common

BUNDLE = "/docs/assets/swagger-ui-bundle.js"  # about 1 MB
THREADS = 12  # gunicorn.conf.py's GUNICORN_THREADS
MB = 1024 * 1024


@dataclass
class Attack:
    """Something hostile that runs for `seconds` in a process of its own: start() begins it, stop() ends it
    (closing its connections) and returns the CPU seconds the process used."""

    start: Callable[[], None]
    stop: Callable[[], float]
    detail: str


def _stop(process: subprocess.Popen, within_s: float, terminate: bool) -> float:
    """End `process` (SIGTERM first if `terminate`, SIGKILL past `within_s`) and return its user + system CPU s."""
    if terminate:
        process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + within_s
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return round(usage.ru_utime + usage.ru_stime, 2)
        if time.monotonic() > deadline:
            process.kill()
            deadline = float("inf")
        time.sleep(0.1)


# --------------------------------------------------------------------------- slowhttptest


SLOWHTTPTEST_MODES: dict[str, Callable[[str, int], list[str]]] = {
    "-H slowloris": lambda base, n: ["-H", "-c", str(n), "-r", "200", "-i", "10", "-s", "8192", "-t", "GET",
                                     "-u", f"{base}/api/bg/health"],
    "-B slow body": lambda base, n: ["-B", "-c", str(n), "-r", "200", "-i", "10", "-s", "8192", "-t", "POST",
                                     "-u", f"{base}/api/bg/remove"],
    "-R range": lambda base, n: ["-R", "-c", str(n), "-r", "200", "-a", "10", "-b", "3000", "-u", f"{base}{BUNDLE}"],
    **{f"-X slow read, pipelining {k}": (lambda k: lambda base, n: [
        "-X", "-c", str(n), "-r", "200", "-w", "512", "-y", "1024", "-n", "5", "-z", "32", "-k", str(k),
        "-u", f"{base}{BUNDLE}"])(k) for k in range(1, 6)},
}


def slowhttptest(mode: str, base: str, connections: int, seconds: float, log: Path, pin: list[str]) -> Attack:
    argv = ["slowhttptest", *SLOWHTTPTEST_MODES[mode](base, connections), "-l", str(int(seconds)), "-p", "3"]
    process: list[subprocess.Popen] = []

    def start() -> None:
        with log.open("wb") as out:
            process.append(subprocess.Popen([*pin, *argv], stdout=out, stderr=subprocess.STDOUT))

    return Attack(start, lambda: _stop(process[0], seconds + 30, terminate=False), " ".join([*pin, *argv]))


# --------------------------------------------------------------------------- socket floods


def _upload_head(declared: int) -> bytes:
    return (f"POST /api/bg/remove HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()


FLOODS: dict[str, tuple[str, Callable[[int], list[bytes]]]] = {
    # (description, connections -> what each connection sends before it stalls)
    "flood: partial uploads (8 MB declared, 500 KB sent)": (
        "N connections send the head of an 8 MB upload and 500 KB of it, then stall",
        lambda n: [_upload_head(8 * MB) + b"x" * 500_000] * n),
    "flood: near-complete uploads (7.9 of 8 MB)": (
        "150 connections send 7.9 MB of an 8 MB upload, then stall",
        lambda n: [_upload_head(8_000_000) + b"x" * 7_900_000] * 150),
    "flood: idle and half-header connections": (
        "N/2 connections send nothing and N/2 send half a header line, then stall",
        lambda n: [b""] * (n // 2) + [b"GET /api/bg/health HTTP/1.1\r\nHost: x\r\nX-Ha"] * (n - n // 2)),
}
IDLE_FLOOD = "flood: idle and half-header connections"


async def _flood(name: str, base: str, connections: int, stop: asyncio.Event) -> None:
    """Each connection sends its bytes and waits; when the server closes it, it reconnects after 0.5 s."""
    host, port = base.split("//", 1)[1].rsplit(":", 1)

    async def hold(payload: bytes) -> None:
        while not stop.is_set():
            writer = None
            try:
                reader, writer = await asyncio.open_connection(host, int(port))
                writer.write(payload)
                await writer.drain()
                closed = asyncio.ensure_future(reader.read())  # until the server closes it
                stopped = asyncio.ensure_future(stop.wait())
                await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
                closed.cancel()
                stopped.cancel()
            except OSError:
                pass
            finally:
                if writer is not None:
                    writer.transport.abort()
            if not stop.is_set():
                await asyncio.sleep(0.5)

    await asyncio.gather(*(hold(payload) for payload in FLOODS[name][1](connections)))


def flood(name: str, base: str, connections: int, pin: list[str]) -> Attack:
    """The flood in its own process (this file as a script), which stops and closes everything on SIGTERM."""
    argv = [*pin, sys.executable, str(Path(__file__).resolve()), name, base, str(connections)]
    process: list[subprocess.Popen] = []

    def start() -> None:
        process.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL))
        time.sleep(0.5)  # its interpreter started and the first connections opened

    return Attack(start, lambda: _stop(process[0], 60, terminate=True),
                  f"{FLOODS[name][0]} (N={connections}); each reconnects 0.5 s after the server closes it"
                  + (f"; {' '.join(pin)}" if pin else ""))


def main(argv: list[str]) -> None:
    """Run one flood until SIGTERM."""
    name, base, connections = argv[0], argv[1], int(argv[2])

    async def run() -> None:
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await _flood(name, base, connections, stop)

    asyncio.run(run())


# --------------------------------------------------------------------------- measuring


@dataclass
class Probe:
    """One health probe on a new connection: seconds to connect, from the request sent to the answer's first
    byte, and in all (inf if it failed or was not 200)."""

    at: float
    connect_s: float
    first_byte_s: float
    total_s: float


@dataclass
class Samples:
    health: list[Probe] = field(default_factory=list)
    rss_mb: list[tuple[float, float]] = field(default_factory=list)
    spool_mb: list[float] = field(default_factory=list)
    tcp_kernel_mb: list[float] = field(default_factory=list)


def spool_bytes(pid: int, folder: Path) -> int:
    """Disk bytes of the files `pid` holds open in `folder` (spooled bodies are unlinked: only fds show them)."""
    total = 0
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return 0
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(str(folder)):
                total += os.stat(f"/proc/{pid}/fd/{fd}").st_blocks * 512
        except OSError:
            continue
    return total


def whole_rss_mb(master: int) -> float:
    return sum(common.proc_mb(pid, "VmRSS") or 0.0 for pid in (master, *common.children_of(master)))


def cpu_s(pid: int | None) -> float | None:
    """User + system CPU seconds of a live process so far (all its threads)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, TypeError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tcp_kernel_mb() -> float:
    """Kernel memory in TCP socket buffers (/proc/net/sockstat, network-namespace wide), MB."""
    for line in Path("/proc/net/sockstat").read_text().splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return int(fields[fields.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / MB
    return 0.0


def listen_drops() -> dict[str, int]:
    """The kernel's counters of connections dropped at a full accept queue (network-namespace wide)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines() if line.startswith("TcpExt:")]
    counters = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    return {name: counters.get(name, 0) for name in ("ListenOverflows", "ListenDrops")}


def _probe(base: str, timeout_s: float = 5.0) -> Probe:
    """GET /api/bg/health on a new connection, timed in its two waits: the connect (a SYN dropped at a full
    accept queue is retried after 1 s) and the answer's first byte (the server's event loop and threads);
    the total runs to the end of the body (as a client that reads Content-Length bytes)."""
    host, port = base.split("//", 1)[1].rsplit(":", 1)
    started = time.monotonic()
    connected = first = float("inf")
    ok = False
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s) as sock:
            connected = time.monotonic()
            sock.settimeout(max(0.01, started + timeout_s - connected))
            sock.sendall(b"GET /api/bg/health HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            received = sock.recv(65536)
            first = time.monotonic()
            while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
                received += chunk
            head, _, body = received.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?im)^content-length: *(\d+)", head).group(1))
            while len(body) < length and (chunk := sock.recv(65536)):
                body += chunk
            ok = head.startswith(b"HTTP/1.1 200 ") and len(body) == length
    except (OSError, AttributeError):  # AttributeError: an answer without Content-Length
        pass
    ended = time.monotonic()
    return Probe(started, connected - started, first - connected, ended - started if ok else float("inf"))


def _capacity_ok(base: str) -> bool:
    """THREADS requests at once all answer 200 within 2 s."""
    results: list[bool] = []

    def one() -> None:
        try:
            results.append(requests.get(base + "/api/bg/status", timeout=2).status_code == 200)
        except requests.RequestException:
            results.append(False)

    threads = [threading.Thread(target=one) for _ in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return all(results)


def run_attack(attack: Attack, base: str, seconds: float, photo: bytes, server: common.Server | None) -> dict:
    """Run `attack` for `seconds` against `base`; `server` (ours, started here) adds memory and spool figures."""
    samples = Samples()
    done = threading.Event()

    def prober() -> None:
        while not done.is_set():
            samples.health.append(_probe(base))
            done.wait(0.25)

    def sampler() -> None:
        while not done.is_set() and server is not None:
            samples.rss_mb.append((time.monotonic(), whole_rss_mb(server.master)))
            samples.spool_mb.append(sum(spool_bytes(pid, server.upload_folder)
                                        for pid in common.children_of(server.master)) / MB)
            samples.tcp_kernel_mb.append(tcp_kernel_mb())
            done.wait(0.2)

    idle_mb = whole_rss_mb(server.master) if server is not None else None
    watchers = [threading.Thread(target=prober, daemon=True), threading.Thread(target=sampler, daemon=True)]
    drops_before = listen_drops()
    load = common.loadavg()
    worker_cpu_before = cpu_s(server.worker) if server is not None else None
    began, began_epoch = time.monotonic(), time.time()
    attack.start()
    for watcher in watchers:
        watcher.start()
    time.sleep(seconds / 2)
    upload_started = time.monotonic()
    try:
        upload = requests.post(base + "/api/bg/remove", files={"file": ("p.jpg", photo)}, timeout=60)
        upload_status: int | str = upload.status_code
    except requests.RequestException as exc:
        upload_status = type(exc).__name__
    upload_s = time.monotonic() - upload_started
    time.sleep(max(0.0, began + seconds - time.monotonic()))
    worker_cpu_after = cpu_s(server.worker) if server is not None else None
    attack_s = time.monotonic() - began
    attacker_cpu_s = attack.stop()
    ended = time.monotonic()
    drops = {name: value - drops_before[name] for name, value in listen_drops().items()}
    done.set()
    for watcher in watchers:
        watcher.join()
    recovery_s = None
    while time.monotonic() - ended < 60:
        if _probe(base, 1.0).total_s < 1.0 and _capacity_ok(base):
            recovery_s = round(time.monotonic() - ended, 2)
            break
        time.sleep(0.25)
    after_mb = after_s = None
    if server is not None and idle_mb is not None:
        while True:
            after_mb, after_s = whole_rss_mb(server.master), round(time.monotonic() - ended, 1)
            if after_mb <= idle_mb + 60 or after_s >= 30:
                break
            time.sleep(0.5)
    during = [probe for probe in samples.health if probe.at <= ended]
    worst = max(during, key=lambda probe: probe.total_s, default=None)
    memory = server.memory() if server is not None else {}
    worker_cpu = (None if worker_cpu_before is None or worker_cpu_after is None
                  else round(100 * (worker_cpu_after - worker_cpu_before) / attack_s))
    return {
        "loadavg_before": load,
        "health_probes": len(during),
        "health_worst_s": worst.total_s if worst else None,
        "health_worst_split_s": [round(worst.connect_s, 3), round(worst.first_byte_s, 3)] if worst else None,
        "health_worst_at_s": round(worst.at - began, 1) if worst else None,
        "upload_window_s": [round(upload_started - began, 1), round(upload_started + upload_s - began, 1)],
        "health_connect_worst_s": round(max(probe.connect_s for probe in during), 3) if during else None,
        "health_first_byte_worst_s": round(max(probe.first_byte_s for probe in during), 3) if during else None,
        "health_failed": sum(1 for probe in during if probe.total_s == float("inf")),
        "health_over_1s": sum(1 for probe in during if probe.total_s >= 1.0),
        # The slow probes' times (s after the attack began, wall clock of its start beside), to set against
        # the upload's window and a profile of the worker.
        "began_epoch": round(began_epoch, 3),
        "health_slow": [[round(probe.at - began, 2), round(probe.total_s, 3)] for probe in during
                        if probe.total_s >= 0.5],
        "attacker_cpu_pct": round(100 * attacker_cpu_s / attack_s),
        "worker_cpu_pct": worker_cpu,
        "listen_drops": drops,
        "upload_during": upload_status, "upload_s": round(upload_s, 2),
        "recovery_s": recovery_s,
        "rss_idle_mb": idle_mb,
        "rss_sampled_peak_mb": max((mb for _, mb in samples.rss_mb), default=None),
        "whole_server_hwm_mb": round((memory.get("worker_hwm_mb") or 0) + (memory.get("master_hwm_mb") or 0), 1)
        if server is not None else None,
        "rss_after_mb": after_mb, "rss_after_s": after_s,
        "spool_peak_mb": round(max(samples.spool_mb, default=0.0), 1) if server is not None else None,
        "tcp_kernel_peak_mb": round(max(samples.tcp_kernel_mb, default=0.0), 1) if server is not None else None,
    }


def attacks(base: str, connections: int, seconds: float, logs: Path, idle: int = 0,
            pin: list[str] | None = None) -> dict[str, Callable[[], Attack]]:
    """Every attack by name, each made fresh when called; the idle flood has `idle` connections (default 3 x
    `connections`, past the front's MAX_CONNECTIONS); `pin` prefixes the attacker's command (taskset)."""
    made: dict[str, Callable[[], Attack]] = {}
    for mode in SLOWHTTPTEST_MODES:
        made[f"slowhttptest {mode}"] = (lambda m: lambda: slowhttptest(
            m, base, connections, seconds, logs / f"slowhttptest{m.split()[0]}{m[-1]}.log", pin or []))(mode)
    for name in FLOODS:
        size = (idle or 3 * connections) if name == IDLE_FLOOD else connections
        made[name] = (lambda n, size: lambda: flood(n, base, size, pin or []))(name, size)
    return made


def have_slowhttptest() -> bool:
    return shutil.which("slowhttptest") is not None


def verdict(result: dict) -> list[str]:
    """The issue's goals this result misses (empty: met)."""
    missed = []
    if result["health_worst_s"] is None or result["health_worst_s"] >= 1.0:
        missed.append("health >= 1 s during")
    if result["upload_during"] != 200:
        missed.append(f"upload during: {result['upload_during']}")
    if result["recovery_s"] is None or result["recovery_s"] > 5:
        missed.append("recovery > 5 s")
    if result["whole_server_hwm_mb"] is not None and result["whole_server_hwm_mb"] > 450:
        missed.append("peak > 450 MB")
    if result["rss_after_mb"] is not None and result["rss_after_mb"] > result["rss_idle_mb"] + 60:
        missed.append("RSS not back within 60 MB in 30 s")
    return missed


def table(results: list[dict]) -> str:
    lines = ["| attack | health worst during (s): connect + answer, probes / failed | upload during | "
             "recovery after (s) | RSS idle / sampled peak / after (MB, s) | whole-server peak VmHWM (MB) | "
             "spool peak (MB) | CPU attacker / worker (% of one vCPU) | accept-queue overflows | missed |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        worst = "-" if r["health_worst_s"] is None else (
            f"{r['health_worst_s']:.3f} ({r['health_worst_split_s'][0]:.3f} + {r['health_worst_split_s'][1]:.3f})")
        rss = "-" if r["rss_idle_mb"] is None else (
            f"{r['rss_idle_mb']:.0f} / {r['rss_sampled_peak_mb']:.0f} / {r['rss_after_mb']:.0f} ({r['rss_after_s']} s)")
        worker = "-" if r["worker_cpu_pct"] is None else r["worker_cpu_pct"]
        lines.append(f"| {r['attack']} (load {r['loadavg_before'].split()[0]}) | {worst}, {r['health_probes']} / {r['health_failed']} | "
                     f"{r['upload_during']} ({r['upload_s']} s) | {r['recovery_s']} | {rss} | "
                     f"{r['whole_server_hwm_mb'] if r['whole_server_hwm_mb'] is not None else '-'} | "
                     f"{r['spool_peak_mb'] if r['spool_peak_mb'] is not None else '-'} | "
                     f"{r['attacker_cpu_pct']} / {worker} | {r['listen_drops']['ListenOverflows']} | "
                     f"{'; '.join(r['missed']) or 'none'} |")
    return "\n".join(lines)

if __name__ == "__main__":
    main(sys.argv[1:])
