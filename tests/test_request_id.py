"""X-Request-ID: a sane incoming ID is echoed, anything else replaced; on every response and in every JSON error."""
from __future__ import annotations

import re

import pytest

from tests.conftest import image_bytes, photo, upload

GENERATED = re.compile(r"[0-9a-f]{32}")


def test_generated_when_absent_and_unique(client):
    first = client.get("/api/bg/health").headers["X-Request-ID"]
    second = client.get("/api/bg/health").headers["X-Request-ID"]
    assert GENERATED.fullmatch(first) and GENERATED.fullmatch(second) and first != second


@pytest.mark.parametrize("incoming", ["abc", "3f0c2a9e-8d1b-4c55-9a43-0e2f7d9b1c6a", "trace.span:42_x", "a" * 128])
def test_sane_incoming_is_echoed(client, incoming):
    assert client.get("/api/bg/status", headers={"X-Request-ID": incoming}).headers["X-Request-ID"] == incoming


@pytest.mark.parametrize("incoming", ["", "a" * 129, "has space", "quote\"d", "semi;colon", "slash/../x", "üñí"])
def test_insane_incoming_is_replaced(client, incoming):
    echoed = client.get("/api/bg/status", headers={"X-Request-ID": incoming}).headers["X-Request-ID"]
    assert GENERATED.fullmatch(echoed)


def test_on_image_results(client):
    response = client.post("/api/bg/remove", data=upload(image_bytes(photo(), "PNG")),
                           headers={"X-Request-ID": "img-1"})
    assert response.status_code == 200 and response.headers["X-Request-ID"] == "img-1"


@pytest.mark.parametrize("method, path, data, status", [
    ("post", "/api/bg/remove", {}, 400),                                  # ApiError: no file
    ("post", "/api/bg/remove", upload(b"plain text", "a.png"), 415),       # ApiError from imaging
    ("get", "/api/bg/nope", None, 404),                                    # werkzeug HTTPException
    ("get", "/api/bg/remove", None, 405),
])
def test_in_error_bodies(client, method, path, data, status):
    response = getattr(client, method)(path, data=data, headers={"X-Request-ID": "err-7"})
    assert response.status_code == status
    assert response.get_json() == {"error": response.get_json()["error"], "request_id": "err-7"}
    assert response.headers["X-Request-ID"] == "err-7"


def test_in_the_413_and_401_bodies(make_app):
    client = make_app(MAX_FILE_SIZE_MB="1", API_KEY="k").test_client()
    unauthorised = client.post("/api/bg/remove", data=upload(b"x"))
    assert unauthorised.status_code == 401
    assert unauthorised.get_json()["request_id"] == unauthorised.headers["X-Request-ID"]
    huge = client.post("/api/bg/remove", data=upload(b"\0" * (2 * 1024 * 1024)), headers={"X-API-Key": "k"})
    assert huge.status_code == 413
    assert huge.get_json()["request_id"] == huge.headers["X-Request-ID"]


def test_in_unexpected_errors(app):
    def boom() -> str:
        raise RuntimeError("bug")

    app.add_url_rule("/boom", "boom", boom)
    response = app.test_client().get("/boom", headers={"X-Request-ID": "bug-1"})
    assert response.status_code == 500
    assert response.get_json() == {"error": "internal error; the request was not processed", "request_id": "bug-1"}
