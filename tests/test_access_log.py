"""gunicorn with gunicorn.conf.py writes one access line per request: ID, method, path, status, bytes, time."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.test_server import ROOT, free_port

LINE = re.compile(r"request_id=(\S+) remote=\S+ method=(\S+) path=(\S+) status=(\d{3}) bytes=(\d+|-) duration_ms=(\d+)")


def test_access_log_line(tmp_path: Path):
    port = free_port()
    env = {**os.environ, "PORT": str(port), "MODEL_DIR": str(tmp_path / "m"), "UPLOAD_FOLDER": str(tmp_path / "u"),
           "PROCESSED_FOLDER": str(tmp_path / "p")}
    log_path = tmp_path / "gunicorn.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "app_isnet_tiny:app"],
                                   cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 30
            while True:
                try:
                    requests.get(f"{base}/api/bg/health", timeout=5)
                    break
                except requests.RequestException:  # refused while starting, or slow on a busy machine
                    assert time.monotonic() < deadline, log_path.read_text(errors="replace")[-2000:]
                    time.sleep(0.2)
            ok = requests.get(f"{base}/api/bg/status?x=1", headers={"X-Request-ID": "trace-42"}, timeout=10)
            missing = requests.get(f"{base}/api/bg/nope%0Aforged", timeout=10)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=30)
    lines = [LINE.search(line) for line in log_path.read_text(errors="replace").splitlines()]
    found = {match.group(1): match.groups()[1:] for match in lines if match}
    assert found["trace-42"][:3] == ("GET", "/api/bg/status?x=1", "200")
    assert int(found["trace-42"][3]) == len(ok.content)
    generated = missing.headers["X-Request-ID"]
    assert missing.json()["request_id"] == generated
    assert found[generated][:3] == ("GET", "/api/bg/nope%0Aforged", "404")  # still encoded: one line
