"""app.cpus: the CPU count ORT_THREADS=auto uses, from fake cgroup trees and affinity counts."""
import os
import sys
import threading
from pathlib import Path

import pytest

from app import cpus
from app.config import Config, ConfigError


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _self(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "proc-self-cgroup"
    path.write_text(text)
    return path


def test_v2_quota_limits(tmp_path: Path):
    root = tmp_path / "cg"
    _write(root / "cpu.max", "200000 100000\n")
    assert cpus.cgroup_cpu_limit(root, _self(tmp_path, "0::/\n")) == 2.0
    assert cpus.available_cpus(root, _self(tmp_path, "0::/\n"), affinity=32) == 2


def test_v2_unlimited_leaves_affinity(tmp_path: Path):
    root = tmp_path / "cg"
    _write(root / "cpu.max", "max 100000\n")
    assert cpus.cgroup_cpu_limit(root, _self(tmp_path, "0::/\n")) is None
    assert cpus.available_cpus(root, _self(tmp_path, "0::/\n"), affinity=6) == 6


def test_v2_tightest_ancestor_wins(tmp_path: Path):
    root = tmp_path / "cg"
    _write(root / "system.slice" / "cpu.max", "300000 100000")
    _write(root / "system.slice" / "app.scope" / "cpu.max", "max 100000")
    self_cgroup = _self(tmp_path, "0::/system.slice/app.scope\n")
    assert cpus.available_cpus(root, self_cgroup, affinity=8) == 3


def test_fractional_quota_rounds_down_but_never_below_one(tmp_path: Path):
    root = tmp_path / "cg"
    _write(root / "cpu.max", "150000 100000")
    assert cpus.available_cpus(root, _self(tmp_path, "0::/\n"), affinity=4) == 1
    _write(root / "cpu.max", "50000 100000")
    assert cpus.available_cpus(root, _self(tmp_path, "0::/\n"), affinity=4) == 1
    _write(root / "cpu.max", "250000 100000")
    assert cpus.available_cpus(root, _self(tmp_path, "0::/\n"), affinity=4) == 2


def test_v1_quota(tmp_path: Path):
    root = tmp_path / "cg"
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "400000\n")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    self_cgroup = _self(tmp_path, "4:memory:/x\n3:cpu,cpuacct:/\n1:name=systemd:/\n")
    assert cpus.cgroup_cpu_limit(root, self_cgroup) == 4.0
    assert cpus.available_cpus(root, self_cgroup, affinity=16) == 4


def test_v1_unlimited_quota(tmp_path: Path):
    root = tmp_path / "cg"
    _write(root / "cpu" / "cpu.cfs_quota_us", "-1")
    _write(root / "cpu" / "cpu.cfs_period_us", "100000")
    self_cgroup = _self(tmp_path, "2:cpuacct,cpu:/\n")
    assert cpus.cgroup_cpu_limit(root, self_cgroup) is None
    assert cpus.available_cpus(root, self_cgroup, affinity=2) == 2


def test_v1_container_without_cgroup_namespace(tmp_path: Path):
    """/proc/self/cgroup names the host's path, which is not mounted: the controller's root holds the quota."""
    root = tmp_path / "cg"
    _write(root / "cpu,cpuacct" / "cpu.cfs_quota_us", "100000")
    _write(root / "cpu,cpuacct" / "cpu.cfs_period_us", "100000")
    self_cgroup = _self(tmp_path, "3:cpu,cpuacct:/docker/0123abcd\n")
    assert cpus.available_cpus(root, self_cgroup, affinity=8) == 1


def test_affinity_smaller_than_quota_wins(tmp_path: Path):
    root = tmp_path / "cg"
    _write(root / "cpu.max", "800000 100000")
    assert cpus.available_cpus(root, _self(tmp_path, "0::/\n"), affinity=2) == 2


@pytest.mark.parametrize("junk", ["", "garbage", "abc 100000", "100000 0", "1 2 3"])
def test_unreadable_or_junk_files_mean_no_limit(tmp_path: Path, junk: str):
    root = tmp_path / "cg"
    _write(root / "cpu.max", junk)
    assert cpus.available_cpus(root, _self(tmp_path, "0::/\n"), affinity=3) == 3


def test_no_cgroup_files_at_all(tmp_path: Path):
    assert cpus.available_cpus(tmp_path / "none", tmp_path / "missing", affinity=5) == 5


def test_real_machine_gives_a_sane_count():
    found = cpus.available_cpus()
    assert 1 <= found <= cpus.affinity_cpus()


def test_ort_threads_auto_uses_available_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("app.config.available_cpus", lambda: 3)
    assert Config.from_env({"MODEL_DIR": str(tmp_path), "ORT_THREADS": "auto"}).ort_threads == 3
    assert Config.from_env({"MODEL_DIR": str(tmp_path), "ORT_THREADS": " AUTO "}).ort_threads == 3
    monkeypatch.setattr("app.config.available_cpus", lambda: 500)
    assert Config.from_env({"MODEL_DIR": str(tmp_path), "ORT_THREADS": "auto"}).ort_threads == 64


def test_ort_threads_number_still_default_one(tmp_path: Path):
    assert Config.from_env({"MODEL_DIR": str(tmp_path)}).ort_threads == 1
    assert Config.from_env({"MODEL_DIR": str(tmp_path), "ORT_THREADS": "2"}).ort_threads == 2


def test_ort_threads_bad_value_mentions_auto(tmp_path: Path):
    with pytest.raises(ConfigError, match="ORT_THREADS='two'.*auto"):
        Config.from_env({"MODEL_DIR": str(tmp_path), "ORT_THREADS": "two"})


def _nice() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_lower_thread_priority_lowers_only_the_calling_thread_and_what_it_starts():
    base = _nice()
    seen: dict[str, object] = {}

    def lowered() -> None:
        seen["returned"] = cpus.lower_thread_priority(4)
        seen["again"] = cpus.lower_thread_priority(4)  # idempotent: still base + 4, not + 8
        seen["thread"] = _nice()
        child = threading.Thread(target=lambda: seen.update(child=_nice()))
        child.start()
        child.join()
        seen["capped"] = cpus.lower_thread_priority(40)

    thread = threading.Thread(target=lowered)
    thread.start()
    thread.join()
    assert seen["returned"] == seen["again"] == seen["thread"] == seen["child"] == min(19, base + 4)
    assert seen["capped"] == 19
    assert cpus.lower_thread_priority(4) is None and _nice() == base  # never the main thread
    assert cpus.lower_thread_priority(0) is None


def test_inference_nice_is_read_and_checked():
    assert Config().inference_nice == Config.from_env({}).inference_nice == 10
    assert Config.from_env({"INFERENCE_NICE": "0"}).inference_nice == 0
    with pytest.raises(ConfigError, match="INFERENCE_NICE=20 is out of range"):
        Config.from_env({"INFERENCE_NICE": "20"})
