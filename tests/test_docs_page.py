"""/docs/: Swagger UI from the swagger-ui-bundle package, same-origin only, no inline script, open with a key."""
from __future__ import annotations

import re
import shutil
import tempfile
import time
from typing import Iterator

import pytest

from app import create_app
from app.services.isnet_tiny_service import IsnetTinyService
from tests.conftest import served


def test_page_loads_only_its_own_relative_assets(client):
    assert client.get("/docs").status_code == 308  # to /docs/, so relative links resolve under it
    response = client.get("/docs/")
    assert response.status_code == 200 and response.mimetype == "text/html"
    html = response.get_data(as_text=True)
    assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert not re.search(r"<script(?![^>]*\ssrc=)[^>]*>", html), "inline scripts are blocked by the CSP"
    assert not re.search(r"\son\w+=", html), "inline handlers are blocked by the CSP"
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls and not [url for url in urls if "//" in url or url.startswith("/")]
    for url in urls:
        if url.startswith("assets/"):
            asset = client.get("/docs/" + url)
            assert asset.status_code == 200 and asset.data, url


def test_assets_are_served_from_the_package(client):
    bundle = client.get("/docs/assets/swagger-ui-bundle.js")
    assert bundle.status_code == 200 and bundle.mimetype in ("text/javascript", "application/javascript")
    assert b"SwaggerUIBundle" in bundle.data[:5000] or len(bundle.data) > 500_000
    init = client.get("/docs/assets/docs-init.js").get_data(as_text=True)
    assert "validatorUrl: null" in init and "openapi.json" in init


@pytest.mark.parametrize("name", ["index.html", "swagger-ui-bundle.js.map", "..%2f__init__.py", "docs.py"])
def test_other_files_are_not_served(client, name):
    assert client.get(f"/docs/assets/{name}").status_code == 404


def test_open_with_an_api_key(make_app):
    client = make_app(API_KEY="k").test_client()
    assert client.get("/docs/").status_code == 200
    assert client.get("/docs/assets/docs-init.js").status_code == 200


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("docs")
    IsnetTinyService._instance = None
    app = create_app({"FLASK_ENV": "testing", "MODEL_DIR": str(home / "m"), "UPLOAD_FOLDER": str(home / "u"),
                      "PROCESSED_FOLDER": str(home / "p")})
    try:
        with served(app) as url:
            yield url
    finally:
        IsnetTinyService._instance = None


@pytest.mark.skipif(not (CHROMIUM and CHROMEDRIVER), reason="chromium and chromedriver are not installed")
def test_swagger_ui_renders_in_a_browser_without_errors_or_third_party_requests(docs_server: str):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    profile = tempfile.mkdtemp(prefix="pixport-docs-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.get(docs_server + "/docs/")
        deadline = time.monotonic() + 30
        while not driver.find_elements(By.CSS_SELECTOR, ".opblock") and time.monotonic() < deadline:
            time.sleep(0.2)
        operations = {element.get_attribute("id") for element in driver.find_elements(By.CSS_SELECTOR, ".opblock")}
        assert {"operations-default-remove", "operations-default-changeColor"} <= operations
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert resources and all(url.startswith(docs_server + "/") for url in resources), resources
        problems = [entry["message"] for entry in driver.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
        assert not problems, problems  # a CSP violation would show here
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
