"""The service's app plus GET /wedge, whose requests never return: tests/test_slow_clients.py serves it to
take every thread of a worker on purpose and watch the watchdog replace that worker."""
from __future__ import annotations

import threading

from app_isnet_tiny import app

_never = threading.Event()


@app.get("/wedge")
def wedge() -> str:
    _never.wait()
    return ""
