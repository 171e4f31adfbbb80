"""CORS_ORIGINS: no CORS headers unless set; listed origins (or *) get them, preflights included, without the key.

Requests run on the 64 px disc model (the disc_model mark): these tests are about headers.
"""
from __future__ import annotations

import base64
import shutil
from contextlib import ExitStack

import pytest
from werkzeug.wrappers import Response

from app.config import Config, ConfigError
from tests.conftest import image_bytes, photo, served, upload

pytestmark = pytest.mark.disc_model

PREFLIGHT = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
             "Access-Control-Request-Headers": "authorization, x-api-key, x-request-id"}


def test_unset_means_no_cors_headers(client):
    response = client.get("/api/bg/status", headers={"Origin": "https://app.example"})
    assert response.status_code == 200
    assert not [name for name in response.headers.keys() if name.lower().startswith("access-control-")]
    preflight = client.options("/api/bg/remove", headers=PREFLIGHT)
    assert not [name for name in preflight.headers.keys() if name.lower().startswith("access-control-")]


def test_listed_origin_gets_headers_and_others_do_not(make_app):
    client = make_app(CORS_ORIGINS="https://app.example, http://localhost:3000/").test_client()
    ok = client.get("/api/bg/status", headers={"Origin": "https://app.example"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://app.example"
    exposed = {h.strip().lower() for h in ok.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"content-disposition", "x-request-id", "retry-after"} <= exposed
    assert "Origin" in ok.headers.get("Vary", "")
    local = client.get("/api/bg/status", headers={"Origin": "http://localhost:3000"})
    assert local.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
    other = client.get("/api/bg/status", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    no_origin = client.get("/api/bg/status")
    assert "Access-Control-Allow-Origin" not in no_origin.headers


def test_preflight_needs_no_key_and_allows_the_key_headers(make_app):
    client = make_app(CORS_ORIGINS="https://app.example", API_KEY="secret").test_client()
    preflight = client.options("/api/bg/remove", headers=PREFLIGHT)
    assert preflight.status_code == 200, preflight.get_data(as_text=True)
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    allowed = {h.strip().lower() for h in preflight.headers["Access-Control-Allow-Headers"].split(",")}
    assert {"authorization", "x-api-key", "x-request-id"} <= allowed
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert int(preflight.headers["Access-Control-Max-Age"]) > 0
    assert "X-Request-ID" in preflight.headers
    # The real request still needs the key, and its 401 is readable by the page (CORS headers on errors too).
    denied = client.post("/api/bg/remove", headers={"Origin": "https://app.example"},
                         data=upload(image_bytes(photo(), "PNG")))
    assert denied.status_code == 401
    assert denied.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert denied.get_json()["request_id"] == denied.headers["X-Request-ID"]
    allowed_post = client.post("/api/bg/remove", headers={"Origin": "https://app.example", "X-API-Key": "secret"},
                               data=upload(image_bytes(photo(), "PNG")))
    assert allowed_post.status_code == 200
    assert allowed_post.headers["Access-Control-Allow-Origin"] == "https://app.example"


def test_preflight_from_an_unlisted_origin_gets_no_allowance(make_app):
    client = make_app(CORS_ORIGINS="https://app.example").test_client()
    preflight = client.options("/api/bg/remove", headers={**PREFLIGHT, "Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert "Access-Control-Allow-Headers" not in preflight.headers


def test_wildcard(make_app):
    client = make_app(CORS_ORIGINS="*", API_KEY="secret").test_client()
    response = client.get("/api/bg/health", headers={"Origin": "https://anywhere.example"})
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert "Access-Control-Allow-Credentials" not in response.headers
    preflight = client.options("/api/bg/change_color", headers=PREFLIGHT)
    assert preflight.status_code == 200 and preflight.headers["Access-Control-Allow-Origin"] == "*"


def test_options_on_an_unknown_path_is_still_404(make_app):
    client = make_app(CORS_ORIGINS="*").test_client()
    assert client.options("/api/bg/nope", headers=PREFLIGHT).status_code == 404


def test_ipv6_origin_is_matched_literally(make_app):
    client = make_app(CORS_ORIGINS="http://[::1]:3000").test_client()
    ok = client.get("/api/bg/health", headers={"Origin": "http://[::1]:3000"})
    assert ok.headers["Access-Control-Allow-Origin"] == "http://[::1]:3000"
    # As a regex, [::1] would be a character class and match this one.
    lookalike = client.get("/api/bg/health", headers={"Origin": "http://1:3000"})
    assert "Access-Control-Allow-Origin" not in lookalike.headers


def test_config_parses_origins(tmp_path):
    base = {"MODEL_DIR": str(tmp_path)}
    assert Config.from_env(base).cors_origins == ()
    assert Config.from_env({**base, "CORS_ORIGINS": " * "}).cors_origins == ("*",)
    parsed = Config.from_env({**base, "CORS_ORIGINS": "https://a.example/, http://localhost:8080,,"}).cors_origins
    assert parsed == ("https://a.example", "http://localhost:8080")


@pytest.mark.parametrize("value", ["a.example", "https://a.example/path", "ftp://a.example", "https://a.example,*"])
def test_config_rejects_non_origins(tmp_path, value):
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        Config.from_env({"MODEL_DIR": str(tmp_path), "CORS_ORIGINS": value})


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")

# Runs in a page of another origin: a POST with the API key header (so the browser must preflight), then
# reads the exposed headers and the image.
CROSS_ORIGIN_FETCH = """
const [url, b64, done] = arguments;
const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
const form = new FormData();
form.append('file', new Blob([bytes], {type: 'image/png'}), 'p.png');
fetch(url, {method: 'POST', body: form, headers: {'X-API-Key': 'secret', 'X-Request-ID': 'browser-1'}})
  .then(async r => done({status: r.status, type: r.headers.get('content-type'),
                          disposition: r.headers.get('content-disposition'), id: r.headers.get('x-request-id'),
                          size: (await r.arrayBuffer()).byteLength}))
  .catch(e => done({error: String(e)}));
"""


def _cross_origin_results(make_app, tmp_path, other_url: str) -> dict[str, dict]:
    """The same check twice from other_url, in one browser: against an API that lists it in CORS_ORIGINS and
    against one that does not (two servers, so the browser's preflight cache cannot carry over)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    photo_b64 = base64.b64encode(image_bytes(photo(), "PNG")).decode()
    results: dict[str, dict] = {}
    with ExitStack() as stack:
        api_urls = {allowed: stack.enter_context(served(make_app(CORS_ORIGINS=allowed, API_KEY="secret")))
                    for allowed in (other_url, "https://not-this.example")}
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            driver.set_script_timeout(60)
            driver.get(other_url + "/")
            for allowed, api_url in api_urls.items():
                results[allowed] = driver.execute_async_script(CROSS_ORIGIN_FETCH, api_url + "/api/bg/remove",
                                                               photo_b64)
        finally:
            driver.quit()
    return results


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are not installed")
def test_a_browser_on_another_origin_can_call_the_api(make_app, tmp_path):
    page = Response("<!doctype html><title>other site</title>", mimetype="text/html")
    with served(lambda environ, start: page(environ, start)) as other_url:
        results = _cross_origin_results(make_app, tmp_path, other_url)
    ok = results[other_url]
    assert ok.get("status") == 200, ok
    assert ok["type"] == "image/png" and ok["size"] > 100
    assert ok["disposition"].startswith("attachment") and ok["id"] == "browser-1"
    assert "error" in results["https://not-this.example"]  # TypeError: Failed to fetch
