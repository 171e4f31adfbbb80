"""How many CPUs this process may actually use: the smallest of the affinity mask and any cgroup CPU quota.

os.cpu_count() reports the host's cores, not the container's share: on a 2-vCPU Railway replica running
on a 32-core host it says 32, and 32 onnxruntime threads on a 2-CPU quota get throttled. ORT_THREADS=auto
uses available_cpus() instead. A fractional quota rounds down (never below 1), so the threads it allows
never exceed the quota.
"""
from __future__ import annotations

import math
import os
import sys
import threading
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _quota_cpus(quota: int, period: int) -> float | None:
    """CPUs allowed by a quota/period pair; None when unlimited (quota < 0) or nonsense."""
    if quota <= 0 or period <= 0:
        return None
    return quota / period


def _ancestors(relative: str) -> list[str]:
    """'/a/b' -> ['/a/b', '/a', '/']: a quota on any ancestor cgroup limits this one too."""
    parts = [p for p in relative.strip().split("/") if p]
    return ["/" + "/".join(parts[:i]) for i in range(len(parts), 0, -1)] + ["/"]


def _v2_limit(root: Path, relative: str) -> float | None:
    """cgroup v2: `cpu.max` holds '<quota> <period>' or 'max <period>'."""
    limits = []
    for cgroup in _ancestors(relative):
        text = _read(root / cgroup.lstrip("/") / "cpu.max")
        if not text:
            continue
        fields = text.split()
        if len(fields) != 2 or fields[0] == "max":
            continue
        try:
            cpus = _quota_cpus(int(fields[0]), int(fields[1]))
        except ValueError:
            continue
        if cpus is not None:
            limits.append(cpus)
    return min(limits) if limits else None


def _v1_limit(root: Path, relative: str) -> float | None:
    """cgroup v1: `cpu.cfs_quota_us` (-1 = unlimited) over `cpu.cfs_period_us`, in the cpu controller's mount."""
    limits = []
    for mount in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
        base = root / mount
        if not base.is_dir():
            continue
        # Inside a container without a cgroup namespace the listed path is the host's, while the
        # container's own cgroup is mounted at the controller's root: look at both.
        for cgroup in _ancestors(relative):
            quota, period = _read(base / cgroup.lstrip("/") / "cpu.cfs_quota_us"), _read(
                base / cgroup.lstrip("/") / "cpu.cfs_period_us")
            if quota is None or period is None:
                continue
            try:
                cpus = _quota_cpus(int(quota), int(period))
            except ValueError:
                continue
            if cpus is not None:
                limits.append(cpus)
        break
    return min(limits) if limits else None


def cgroup_cpu_limit(root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The tightest CPU quota over this process's cgroup and its ancestors (v2 or v1), or None if none is set."""
    text = _read(self_cgroup) or ""
    v2_path, v1_path = None, None
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and controllers == "":
            v2_path = path
        elif "cpu" in controllers.split(","):
            v1_path = path
    limits = []
    if v1_path is not None:
        limits.append(_v1_limit(root, v1_path))
    if v2_path is not None:
        limits.append(_v2_limit(root, v2_path))
    found = [limit for limit in limits if limit is not None]
    return min(found) if found else None


def affinity_cpus() -> int:
    """CPUs in this process's affinity mask (taskset, cpuset); os.cpu_count() where that is unknown."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def available_cpus(
    root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP, affinity: int | None = None
) -> int:
    """min(affinity mask, cgroup quota rounded down), at least 1."""
    count = affinity_cpus() if affinity is None else affinity
    quota = cgroup_cpu_limit(root, self_cgroup)
    if quota is not None:
        count = min(count, math.floor(quota))
    return max(1, count)


def lower_thread_priority(increment: int) -> int | None:
    """Give the calling thread `increment` nice levels over the process's main thread (at most 19), as
    `nice -n` does for a process; threads it creates from then on inherit the value. Returns the thread's
    nice value, or None where it does not apply: not Linux, the main thread, an increment of 0.

    On Linux the nice value belongs to a thread (setpriority with a thread id), so inference threads can
    yield the CPU to the event loop (the main thread) and the health threads without privileges. An
    unprivileged thread may raise its nice value but never lower it again, so it is for threads that only
    run background work; the main thread is never lowered, since everything it starts would inherit it.
    """
    if increment <= 0 or not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is threading.main_thread():
        return None
    thread = threading.get_native_id()
    try:
        wanted = min(19, os.getpriority(os.PRIO_PROCESS, os.getpid()) + increment)
        if os.getpriority(os.PRIO_PROCESS, thread) < wanted:
            os.setpriority(os.PRIO_PROCESS, thread, wanted)
        return os.getpriority(os.PRIO_PROCESS, thread)
    except OSError:
        return None
