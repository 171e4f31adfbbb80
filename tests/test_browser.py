"""The page at / in a real headless Chromium: upload, remove, status panel, a readable API error, mobile layout.

Needs Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver); skips without them.
Screenshots go to tests/artifacts/ (gitignored).
"""
from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import FIXTURES

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

from app import create_app  # noqa: E402
from app.services.isnet_tiny_service import IsnetTinyService  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"
PHOTO = FIXTURES / "images" / "car-1.jpg"

# Draw the result <img> into a canvas and count its fully transparent and mostly opaque pixels.
ALPHA_JS = """
const img = document.getElementById('result-img');
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
let transparent = 0, solid = 0;
for (let i = 3; i < data.length; i += 4) {
  if (data[i] === 0) transparent++;
  else if (data[i] > 128) solid++;
}
return {width: canvas.width, height: canvas.height, transparent: transparent, solid: solid,
        total: data.length / 4};
"""


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app (bundled u2netp, test folders) on a free loopback port in a background thread."""
    home = tmp_path_factory.mktemp("browser")
    env = {"FLASK_ENV": "testing", "QUEUE_TIMEOUT_S": "20"}
    for name, var in (("models", "MODEL_DIR"), ("uploads", "UPLOAD_FOLDER"), ("processed", "PROCESSED_FOLDER")):
        (home / name).mkdir()
        env[var] = str(home / name)
    IsnetTinyService._instance = None
    app = create_app(env)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="browser-test-server", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        IsnetTinyService._instance = None


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="pixport-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1280,2200"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: WebDriver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path


def script_errors(driver: WebDriver) -> list[str]:
    """Console errors other than the expected 'Failed to load resource' lines for 4xx answers."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]]


def upload_photo(driver: WebDriver, wait: WebDriverWait) -> None:
    driver.find_element(By.ID, "file").send_keys(str(PHOTO.resolve()))
    wait.until(lambda d: d.find_element(By.ID, "file-info").is_displayed())
    assert PHOTO.name in driver.find_element(By.ID, "file-info").text
    wait.until(EC.element_to_be_clickable((By.ID, "submit")))


def test_remove_background_then_bad_colour(base_url: str, browser: WebDriver):
    wait = WebDriverWait(browser, 30, poll_frequency=0.1)
    browser.set_window_size(1280, 2200)
    browser.get(base_url + "/")
    assert "PixPort" in browser.title

    upload_photo(browser, wait)
    assert browser.find_element(By.ID, "before-img").get_attribute("alt") == f"Original: {PHOTO.name}"
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.execute_script(
        "const i = document.getElementById('result-img'); return !i.hidden && i.complete && i.naturalWidth > 0;"))

    pixels = browser.execute_script(ALPHA_JS)
    assert pixels["transparent"] > 0.05 * pixels["total"], pixels  # the background is gone
    assert pixels["solid"] > 0.05 * pixels["total"], pixels  # the car is still there (the mask is soft)
    download = browser.find_element(By.ID, "download")
    assert download.get_attribute("download") == "nobg_car-1.png"  # from Content-Disposition
    assert download.is_displayed()
    assert "removed" in browser.find_element(By.ID, "result-img").get_attribute("alt")
    assert browser.find_element(By.ID, "error").is_displayed() is False

    # The live status panel, refreshed after the request: model name, ready, one inference.
    wait.until(lambda d: d.find_element(By.ID, "st-inferences").text.startswith("1"))
    assert browser.find_element(By.ID, "st-model").text.startswith("u2netp")
    assert browser.find_element(By.ID, "st-state").text == "Ready"
    assert "u2netp" in browser.find_element(By.ID, "header-state").text
    assert "MB" in browser.find_element(By.ID, "st-memory").text
    wait.until(lambda d: d.find_element(By.ID, "submit").is_enabled())
    screenshot(browser, "browser-desktop.png")

    # change_color with a colour the API rejects: the API's JSON error shows up as readable text.
    browser.find_element(By.CSS_SELECTOR, 'input[name="op"][value="change_color"]').find_element(
        By.XPATH, "..").click()
    colour = browser.find_element(By.ID, "color-text")
    assert colour.is_displayed()
    colour.clear()
    colour.send_keys("not-a-colour")
    assert colour.get_attribute("aria-invalid") == "true"
    assert browser.find_element(By.ID, "submit").text == "Change colour"
    browser.find_element(By.ID, "submit").click()
    error = wait.until(EC.visibility_of_element_located((By.ID, "error")))
    assert browser.find_element(By.ID, "error-title").text == "The request was not accepted"
    assert "not-a-colour" in error.text and "#RRGGBB" in error.text
    assert "{" not in error.text  # a sentence, not a JSON dump
    wait.until(lambda d: d.find_element(By.ID, "submit").is_enabled())
    screenshot(browser, "browser-error.png")

    # A good colour works from the same form.
    colour.clear()
    colour.send_keys("0,128,255")
    assert colour.get_attribute("aria-invalid") is None
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.execute_script(
        "const i = document.getElementById('result-img'); return !i.hidden && i.complete && i.naturalWidth > 0;"))
    assert browser.find_element(By.ID, "download").get_attribute("download") == "colored_car-1.jpg"
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert script_errors(browser) == []


def test_size_limit_options_and_mobile_layout(base_url: str, browser: WebDriver, tmp_path: Path):
    wait = WebDriverWait(browser, 20, poll_frequency=0.1)
    browser.set_window_size(390, 2600)
    browser.get(base_url + "/")
    width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
    assert width[0] <= width[1], f"horizontal overflow at mobile width: {width}"

    big = tmp_path / "too-big.jpg"
    big.write_bytes(PHOTO.read_bytes() + b"\0" * (9 * 1024 * 1024))
    browser.find_element(By.ID, "file").send_keys(str(big))
    error = wait.until(EC.visibility_of_element_located((By.ID, "error")))
    assert "too-big.jpg" in error.text and "8 MB" in error.text
    assert not browser.find_element(By.ID, "submit").is_enabled()

    upload_photo(browser, wait)
    assert not browser.find_element(By.ID, "error").is_displayed()

    # Options from "More options" travel with the form: WebP, cropped to the subject.
    browser.find_element(By.CSS_SELECTOR, "#more-options summary").click()
    Select(browser.find_element(By.ID, "opt-format")).select_by_value("webp")
    browser.find_element(By.ID, "opt-crop").click()
    margin = browser.find_element(By.ID, "opt-crop-margin")
    assert margin.is_enabled()
    margin.send_keys("4%")
    browser.find_element(By.ID, "submit").click()
    wait.until(lambda d: d.execute_script(
        "const i = document.getElementById('result-img'); return !i.hidden && i.complete && i.naturalWidth > 0;"))
    assert browser.find_element(By.ID, "download").get_attribute("download") == "nobg_car-1.webp"
    size = browser.execute_script("const i = document.getElementById('result-img'); return [i.naturalWidth, i.naturalHeight];")
    assert size[0] < 480 or size[1] < 360, f"cropped to the car, not the whole 480x360 photo: {size}"
    wait.until(lambda d: d.find_element(By.ID, "submit").is_enabled())
    width = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
    assert width[0] <= width[1], f"horizontal overflow at mobile width: {width}"
    screenshot(browser, "browser-mobile.png")
    assert script_errors(browser) == []
