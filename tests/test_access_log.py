"""gunicorn with gunicorn.conf.py writes one access line per request: ID, method, path, status, bytes, time."""
from __future__ import annotations

import re
from pathlib import Path

import requests

from tests.conftest import gunicorn, wait_healthy

LINE = re.compile(r"request_id=(\S+) remote=\S+ method=(\S+) path=(\S+) status=(\d{3}) bytes=(\d+|-) duration_ms=(\d+)")


def test_access_log_line(tmp_path: Path):
    with gunicorn(tmp_path) as (base, process, log_path):
        wait_healthy(base, process, log_path)
        ok = requests.get(f"{base}/api/bg/status?x=1", headers={"X-Request-ID": "trace-42"}, timeout=10)
        missing = requests.get(f"{base}/api/bg/nope%0Aforged", timeout=10)
    lines = [LINE.search(line) for line in log_path.read_text(errors="replace").splitlines()]
    found = {match.group(1): match.groups()[1:] for match in lines if match}
    assert found["trace-42"][:3] == ("GET", "/api/bg/status?x=1", "200")
    assert int(found["trace-42"][3]) == len(ok.content)
    generated = missing.headers["X-Request-ID"]
    assert missing.json()["request_id"] == generated
    assert found[generated][:3] == ("GET", "/api/bg/nope%0Aforged", "404")  # still encoded: one line
