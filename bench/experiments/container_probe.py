"""Start an image under a 512 MB limit and show what a platform sees: every /health answer until the
first 200, a burst of uploads (each non-200 with its Retry-After), and the start log's bad lines.

    python3 bench/experiments/container_probe.py IMAGE [PORT] [-e NAME=VALUE ...]     # ENGINE=podman by default

Exit status 1 when health never answers 200 with the model ready, when the log has ERROR / Traceback /
onnxruntime warning lines, or when a burst answer is neither 200 nor 503 with Retry-After. With
EXPECT_FAILURE=1 (a model that cannot load) health must settle on 503 with an error instead, and the
ERROR line that reports it is expected. Standard library only.
"""
from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

ENGINE = os.environ.get("ENGINE", "podman")
PHOTO = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "images" / "car-1.jpg"
BURST = int(os.environ.get("BURST", "14"))


def request(port: int, method: str, path: str, body: bytes = b"", headers: dict | None = None,
            timeout: float = 120) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def upload(port: int, data: bytes) -> tuple[int, dict, bytes]:
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"car.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return request(port, "POST", "/api/bg/remove", body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


def main(argv: list[str]) -> int:
    image, port = argv[0], int(argv[1]) if len(argv) > 1 and argv[1].isdigit() else 6100
    extra = [a for a in argv[1:] if not a.isdigit()]
    name = f"probe-{uuid.uuid4().hex[:8]}"
    subprocess.run([ENGINE, "run", "-d", "--name", name, "--memory=512m", "--memory-swap=512m",
                    "-p", f"{port}:8080", *extra, image], check=True, capture_output=True)
    failures: list[str] = []
    try:
        started, answers, first = time.monotonic(), [], None
        while time.monotonic() - started < 120:
            try:
                status, headers, body = request(port, "GET", "/api/bg/health", timeout=5)
            except OSError:
                time.sleep(0.2)
                continue
            state = json.loads(body)
            answers.append((round(time.monotonic() - started, 1), status, state.get("model_state"),
                            headers.get("Retry-After"), state.get("error")))
            if status == 200 or (status == 503 and state.get("model_state") == "failed"):
                first = (status, state)
                break
            time.sleep(0.2)
        distinct = [a for i, a in enumerate(answers) if i == 0 or a[1:] != answers[i - 1][1:]]
        print("health answers (seconds after run, status, model_state, Retry-After, error):")
        for answer in distinct:
            print("  ", answer)
        expect_failure = os.environ.get("EXPECT_FAILURE") == "1"
        if first is None:
            failures.append("health never settled")
        elif expect_failure:
            if first[0] != 503 or not first[1].get("error"):
                failures.append("expected 503 with an error")
        elif first[0] != 200 or first[1].get("model_state") != "ready":
            failures.append(f"first settled health: {first}")
        if first is not None and first[0] == 200 and PHOTO.is_file():
            data, results, lock = PHOTO.read_bytes(), [], threading.Lock()

            def one() -> None:
                status, headers, _ = upload(port, data)
                with lock:
                    results.append((status, headers.get("Retry-After")))

            threads = [threading.Thread(target=one) for _ in range(BURST)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            counts: dict[str, int] = {}
            for status, retry_after in results:
                key = f"{status}" + (f" Retry-After={retry_after}" if status != 200 else "")
                counts[key] = counts.get(key, 0) + 1
                if status != 200 and not (status == 503 and retry_after):
                    failures.append(f"burst answer {status} without Retry-After")
            print(f"burst of {BURST} concurrent uploads: {counts}")
        log = subprocess.run([ENGINE, "logs", name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout
        lines = log.splitlines()
        bad = [line for line in lines if "ERROR" in line or "Traceback" in line or ":onnxruntime:" in line]
        start = [line for line in lines if '"POST ' not in line and '"GET ' not in line and "busy" not in line]
        print("start log:")
        for line in start[:12]:
            print("  ", line)
        print(f"ERROR / Traceback / onnxruntime lines in the log: {len(bad)}")
        for line in bad[:5]:
            print("  ", line)
        if bad and not expect_failure:  # a failed model load is logged as an ERROR, rightly
            failures.append("bad log lines")
    finally:
        subprocess.run([ENGINE, "rm", "-f", name], capture_output=True)
    for failure in failures:
        print("FAIL:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
