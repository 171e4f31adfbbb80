"""The page at / in a real headless Chromium, against a server that requires an API key.

Covers: the result shown large with a before/after slider (pointer and keyboard), background switch and zoom;
labels that follow the options; only the fields each endpoint takes; errors beside their control, announced,
with the last good result kept; the curl examples' key header; the phone layout; the dark theme; text
contrast >= 4.5:1 in both themes; no third-party requests, no inline styles or scripts, no console errors.

Needs Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver); skips without them.
Screenshots go to tests/artifacts/ (gitignored).
"""
from __future__ import annotations

import html
import re
import shutil
import tempfile
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

from tests.conftest import FIXTURES, served

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
if not (CHROMIUM and CHROMEDRIVER):
    pytest.skip("chromium and chromedriver are not installed (apt-get install -y chromium chromium-driver)",
                allow_module_level=True)

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.support import expected_conditions as EC  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

from app import create_app  # noqa: E402
from app.services.isnet_tiny_service import IsnetTinyService  # noqa: E402

ARTIFACTS = Path(__file__).parent / "artifacts"
PHOTO = FIXTURES / "images" / "girl-2.jpg"  # 718x478, landscape
API_KEY = "k3y-that-must-never-reach-the-page-7d1c"

# Draw the result <img> into a canvas; `data` is its RGBA bytes.
RESULT_PIXELS_JS = """
const img = document.getElementById('result-img');
const canvas = document.createElement('canvas');
canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
const ctx = canvas.getContext('2d');
ctx.drawImage(img, 0, 0);
const data = ctx.getImageData(0, 0, canvas.width, canvas.height).data;
"""

# Count the result's fully transparent and mostly opaque pixels.
ALPHA_JS = RESULT_PIXELS_JS + """
let transparent = 0, solid = 0;
for (let i = 3; i < data.length; i += 4) {
  if (data[i] === 0) transparent++;
  else if (data[i] > 128) solid++;
}
return {width: canvas.width, height: canvas.height, transparent: transparent, solid: solid,
        total: data.length / 4};
"""

# Remember which form fields every POST carries, to check the page sends only what each endpoint takes.
RECORD_FETCH_JS = """
window.__sent = [];
const original = window.fetch;
window.fetch = function (url, init) {
  if (init && init.body instanceof FormData) {
    window.__sent.push({url: String(url), keys: Array.from(init.body.keys()),
                        key: (init.headers || {})['X-API-Key'] || null});
  }
  return original.apply(this, arguments);
};
"""

# [name, text colour, background colour] for the page's main text; the background is the first
# opaque one found walking up from the element (every text here sits on a flat colour).
COLOURS_JS = """
function bg(el) {
  for (; el; el = el.parentElement) {
    const c = getComputedStyle(el).backgroundColor;
    const m = c.match(/[\\d.]+/g).map(Number);
    if (m.length < 4 || m[3] > 0.99) return c;
  }
  return getComputedStyle(document.documentElement).backgroundColor;
}
const q = (s) => document.querySelector(s);
const pairs = [
  ['body text', q('.lede').parentElement, q('body')],
  ['heading', q('#try-title'), q('#try-title')],
  ['muted text', q('.panel-head .muted'), q('.panel-head .muted')],
  ['muted on stat', q('.stat dt'), q('.stat dt')],
  ['hint', q('#file-hint'), q('#file-hint')],
  ['option subtitle', q('#op-sub-color'), q('#op-sub-color')],
  ['link', q('#openapi-link'), q('#openapi-link')],
  ['link-like text', q('.link-like'), q('.link-like')],
  ['primary button', q('#submit'), q('#submit')],
  ['secondary button', q('#download'), q('#download')],
  ['ghost button', q('#open-full'), q('#open-full')],
  ['viewer placeholder', q('#placeholder'), q('#placeholder')],
  ['field text', q('#opt-max-dimension'), q('#opt-max-dimension')],
  ['field error', q('#api-key-error'), q('#api-key-error')],
  ['alert body', q('#submit-error-body'), q('#submit-error-body')],
  ['table header', q('.fields th'), q('.fields th')],
  ['code', q('.fields code'), q('.fields code')],
  ['limits label', q('.limits dt'), q('.limits dt')],
  ['error code', q('.code:not(.ok)'), q('.code:not(.ok)')],
  ['success code', q('.code.ok'), q('.code.ok')],
  ['footer', q('.site-footer'), q('.site-footer')],
];
const out = pairs.map(([name, el, on]) => [name, getComputedStyle(el).color, bg(on)]);
for (const id of ['opt-max-dimension', 'opt-api-key']) {
  const el = document.getElementById(id);
  out.push(['placeholder #' + id, getComputedStyle(el, '::placeholder').color, bg(el)]);
}
return out;
"""

SHOW_VIEWER_JS = "document.getElementById('try').scrollIntoView({block: 'start', behavior: 'instant'})"
RESULT_SHOWN_JS = "return !document.getElementById('compare').hidden && document.getElementById('result-img').complete"


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real app (bundled u2netp, API_KEY set) on a free loopback port in a background thread."""
    home = tmp_path_factory.mktemp("browser")
    env = {"FLASK_ENV": "testing", "QUEUE_TIMEOUT_S": "20", "API_KEY": API_KEY}
    for name, var in (("models", "MODEL_DIR"), ("uploads", "UPLOAD_FOLDER"), ("processed", "PROCESSED_FOLDER")):
        (home / name).mkdir()
        env[var] = str(home / name)
    IsnetTinyService._instance = None
    try:
        with served(create_app(env)) as url:
            yield url
    finally:
        IsnetTinyService._instance = None


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    profile = tempfile.mkdtemp(prefix="pixport-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--hide-scrollbars", f"--user-data-dir={profile}", "--window-size=1366,900"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: WebDriver, name: str, full_page: bool = False) -> Path:
    """Save a screenshot to tests/artifacts/ (the whole page when full_page, via CDP)."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    if full_page:
        import base64

        shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"captureBeyondViewport": True, "format": "png"})
        path.write_bytes(base64.b64decode(shot["data"]))
    else:
        driver.save_screenshot(str(path))
    return path


def script_errors(driver: WebDriver) -> list[str]:
    """Console errors other than the expected 'Failed to load resource' lines for 4xx answers."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE" and "Failed to load resource" not in entry["message"]]


def set_theme(driver: WebDriver, scheme: str) -> None:
    """Emulate the colour scheme; reduced motion turns smooth scrolling off so clicks land where WebDriver scrolled."""
    driver.execute_cdp_cmd("Emulation.setEmulatedMedia", {"features": [
        {"name": "prefers-color-scheme", "value": scheme}, {"name": "prefers-reduced-motion", "value": "reduce"}]})


def open_page(driver: WebDriver, base_url: str, width: int, height: int) -> WebDriverWait:
    """Load / with a viewport of width x height: a phone is emulated (windows are at least 500 px wide)."""
    if width < 500:
        driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                               {"width": width, "height": height, "deviceScaleFactor": 2, "mobile": True})
        driver.get(base_url + "/")
    else:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
        driver.set_window_size(width, height)
        driver.get(base_url + "/")
        extra = driver.execute_script("return [outerWidth - innerWidth, outerHeight - innerHeight];")
        if extra != [0, 0]:
            driver.set_window_size(width + extra[0], height + extra[1])
    assert driver.execute_script("return [innerWidth, innerHeight];") == [width, height]
    assert "PixPort" in driver.title
    driver.execute_script(RECORD_FETCH_JS)
    return WebDriverWait(driver, 30, poll_frequency=0.1)


def cutout(driver: WebDriver, wait: WebDriverWait, key: str = API_KEY) -> None:
    """Type the key, choose the photo, press the button, wait for the result."""
    key_input = driver.find_element(By.ID, "opt-api-key")
    assert key_input.is_displayed(), "More options opens by itself when the server needs a key"
    key_input.clear()
    key_input.send_keys(key)
    driver.find_element(By.ID, "file").send_keys(str(PHOTO.resolve()))
    wait.until(lambda d: d.find_element(By.ID, "file-info").is_displayed())
    press(driver, wait.until(EC.element_to_be_clickable((By.ID, "submit"))))
    wait.until(lambda d: d.execute_script(RESULT_SHOWN_JS))
    wait.until(lambda d: d.find_element(By.ID, "submit").is_enabled())


def rect(driver: WebDriver, element_id: str) -> dict[str, float]:
    return driver.execute_script(
        "const r = document.getElementById(arguments[0]).getBoundingClientRect();"
        "return {x: r.left, y: r.top, width: r.width, height: r.height, bottom: r.bottom, right: r.right};",
        element_id)


def press(driver: WebDriver, element: Any) -> None:
    """Click an element after centring it (WebDriver's own scrolling can leave it under the sticky header)."""
    driver.execute_script("arguments[0].scrollIntoView({block: 'center', behavior: 'instant'})", element)
    element.click()


def size(box: dict[str, float]) -> tuple[float, float]:
    return box["width"], box["height"]


def shown_at(driver: WebDriver, fraction: float) -> str:
    """Which picture is on top at `fraction` of the picture's width, halfway down."""
    return driver.execute_script("""
        document.getElementById('stage').scrollIntoView({block: 'center', behavior: 'instant'});
        const r = document.getElementById('canvas').getBoundingClientRect();
        const el = document.elementFromPoint(r.left + r.width * arguments[0], r.top + r.height / 2);
        return el ? el.id : null;""", fraction)


def last_sent(driver: WebDriver) -> dict[str, Any]:
    return driver.execute_script("return window.__sent[window.__sent.length - 1];")


def luminance(css: str) -> float:
    r, g, b = (int(v) / 255 for v in re.findall(r"[\d.]+", css)[:3])
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in (r, g, b)]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(fg: str, bg: str) -> float:
    """WCAG 2 contrast ratio of two opaque `rgb(...)` colours."""
    parts = re.findall(r"[\d.]+", fg)
    assert len(parts) == 3 or float(parts[3]) > 0.99, f"text colour {fg} is translucent"
    hi, lo = sorted((luminance(fg), luminance(bg)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def assert_error_beside(driver: WebDriver, error_id: str, control_id: str, input_id: str | None = None) -> str:
    """The error is visible, announced (role=alert / aria-live), just below its control, which it describes."""
    error = driver.find_element(By.ID, error_id)
    WebDriverWait(driver, 10).until(lambda d: error.is_displayed())
    announced = driver.execute_script(
        "return !!arguments[0].closest('[role=alert], [aria-live]')", error)
    assert announced, f"#{error_id} is not in a live region"
    box, control = rect(driver, error_id), rect(driver, control_id)
    gap = box["y"] - control["bottom"]
    assert -1 <= gap <= 60, f"#{error_id} is {gap:.0f}px from #{control_id}"
    described = driver.find_element(By.ID, input_id or control_id).get_attribute("aria-describedby") or ""
    assert error_id in described.split(), f"#{input_id or control_id} is not described by #{error_id}"
    assert driver.execute_script(
        "const r = arguments[0].getBoundingClientRect(); return r.top >= 0 && r.bottom <= innerHeight;", error), \
        f"#{error_id} is not in view"
    return error.text


def test_desktop_result_slider_background_zoom_and_errors(base_url: str, browser: WebDriver):
    wait = open_page(browser, base_url, 1366, 900)
    set_theme(browser, "light")
    assert API_KEY not in browser.page_source

    # The curl examples carry the key header (a placeholder, never the key) where the server needs it.
    snippets = {el.get_attribute("aria-label"): el.find_element(By.XPATH, "..").find_element(By.TAG_NAME, "code").text
                for el in browser.find_elements(By.CSS_SELECTOR, ".endpoint .snippet .copy")}
    for label, code in snippets.items():
        guarded = any(path in code for path in ("/remove", "/change_color", "/clear_cache"))
        assert ('-H "X-API-Key: $PIXPORT_API_KEY"' in code) == guarded, (label, code)

    cutout(browser, wait)
    sent = last_sent(browser)
    assert sent["url"].endswith("/api/bg/remove") and sent["keys"] == ["file"], sent  # nothing left at default
    pixels = browser.execute_script(ALPHA_JS)
    assert pixels["transparent"] > 0.05 * pixels["total"], pixels  # the background is gone
    assert pixels["solid"] > 0.05 * pixels["total"], pixels  # the subject is still there
    assert browser.find_element(By.ID, "download").get_attribute("download") == "nobg_girl-2.png"
    assert "removed" in browser.find_element(By.ID, "result-img").get_attribute("alt")

    # Large, and the frame has the picture's own shape: no letterbox bars.
    picture = rect(browser, "result-img")
    assert picture["width"] >= 680, picture
    assert abs(picture["width"] / picture["height"] - 718 / 478) < 0.02, picture
    assert rect(browser, "before-img") == picture  # the original lies exactly under the result
    assert abs(rect(browser, "stage")["width"] - picture["width"]) <= 2
    assert browser.execute_script(  # at "fit" nothing scrolls
        "const s = document.getElementById('stage'); return s.scrollWidth <= s.clientWidth && s.scrollHeight <= s.clientHeight;")

    # The slider moves the split: keyboard, then a click on the picture.
    split = browser.find_element(By.ID, "split")
    assert split.get_attribute("value") == "50"
    assert shown_at(browser, 0.25) == "before-img" and shown_at(browser, 0.75) == "result-img"
    split.send_keys(Keys.ARROW_RIGHT * 30)
    assert split.get_attribute("value") == "80"
    assert "80 % before" in split.get_attribute("aria-valuetext")
    assert shown_at(browser, 0.7) == "before-img" and shown_at(browser, 0.9) == "result-img"
    divider = rect(browser, "divider")
    assert abs(divider["x"] + divider["width"] / 2 - (picture["x"] + 0.8 * picture["width"])) < 3
    split.send_keys(Keys.HOME)
    assert split.get_attribute("value") == "0" and shown_at(browser, 0.05) == "result-img"
    ActionChains(browser).move_to_element_with_offset(
        browser.find_element(By.ID, "stage"), int(-0.2 * picture["width"]), 0).click().perform()
    assert 27 <= int(split.get_attribute("value")) <= 33
    assert shown_at(browser, 0.25) == "before-img" and shown_at(browser, 0.35) == "result-img"

    # The background behind the result.
    layer = browser.find_element(By.ID, "after-layer")
    assert "conic-gradient" in layer.value_of_css_property("background-image")
    for value, colour in (("white", "rgba(255, 255, 255, 1)"), ("black", "rgba(0, 0, 0, 1)")):
        press(browser, browser.find_element(By.CSS_SELECTOR, f'input[name="result-bg"][value="{value}"]').find_element(
            By.XPATH, ".."))
        assert layer.value_of_css_property("background-color") == colour
    browser.execute_script("const c = document.getElementById('result-bg-color'); c.value = '#ff0000';"
                           "c.dispatchEvent(new Event('input'));")
    assert layer.value_of_css_property("background-color") == "rgba(255, 0, 0, 1)"
    press(browser, browser.find_element(By.CSS_SELECTOR, 'input[name="result-bg"][value="checker"]').find_element(
        By.XPATH, ".."))

    # Look closer: zoom into a scrollable view of the same size, or open the file itself.
    value_before_zoom = int(split.get_attribute("value"))
    stage = rect(browser, "stage")
    press(browser, browser.find_element(By.CSS_SELECTOR, 'input[name="zoom"][value="4"]').find_element(By.XPATH, ".."))
    assert abs(rect(browser, "result-img")["width"] - 4 * picture["width"]) < 4
    assert size(rect(browser, "stage")) == size(stage)  # the view keeps its size; the picture scrolls inside
    assert browser.execute_script("const s = document.getElementById('stage'); return s.scrollWidth > 3 * s.clientWidth;")
    scrolled = browser.execute_script("return document.getElementById('stage').scrollLeft;")
    ActionChains(browser).move_to_element(browser.find_element(By.ID, "stage")).click_and_hold().move_by_offset(
        -120, 0).release().perform()  # a mouse drag pans
    assert 100 <= browser.execute_script("return document.getElementById('stage').scrollLeft;") - scrolled <= 140
    assert split.get_attribute("value") == str(value_before_zoom)  # and leaves the split alone
    press(browser, browser.find_element(By.CSS_SELECTOR, 'input[name="zoom"][value="1"]').find_element(By.XPATH, ".."))
    assert size(rect(browser, "result-img")) == size(picture)
    full = browser.find_element(By.ID, "open-full")
    assert full.get_attribute("href") == browser.find_element(By.ID, "result-img").get_attribute("src")
    assert full.get_attribute("href").startswith("blob:") and full.get_attribute("target") == "_blank"
    browser.execute_script(SHOW_VIEWER_JS)
    screenshot(browser, "browser-desktop-light.png")
    screenshot(browser, "browser-desktop-light-full.png", full_page=True)

    # Labels follow the options.
    fmt = Select(browser.find_element(By.ID, "opt-format"))
    sub = browser.find_element(By.ID, "op-sub-remove")
    assert sub.text == "Transparent PNG"
    fmt.select_by_value("webp")
    assert sub.text == "Transparent WebP"
    fmt.select_by_value("jpeg")
    assert "JPEG" in sub.text and "Transparent" not in sub.text
    fmt.select_by_value("")
    press(browser, browser.find_element(By.ID, "opt-only-mask"))
    assert sub.text == "Mask only, PNG"
    assert browser.find_element(By.ID, "submit").text == "Get the mask"
    curl = browser.find_element(By.ID, "curl-now").get_attribute("textContent")
    assert "-F only_mask=true" in curl and "/api/bg/remove" in curl and "-o mask_girl-2.png" in curl
    assert '-H "X-API-Key: $PIXPORT_API_KEY"' in curl and API_KEY not in curl

    # A wrong key: a 401 beside the key field, announced, focused; the last result stays.
    result_src = browser.find_element(By.ID, "result-img").get_attribute("src")
    key_input = browser.find_element(By.ID, "opt-api-key")
    key_input.clear()
    key_input.send_keys("wrong")
    press(browser, browser.find_element(By.ID, "submit"))
    text = assert_error_beside(browser, "api-key-error", "opt-api-key")
    assert "API key" in text
    assert key_input.get_attribute("aria-invalid") == "true"
    assert browser.switch_to.active_element == key_input
    assert browser.find_element(By.ID, "result-img").get_attribute("src") == result_src
    assert browser.execute_script(RESULT_SHOWN_JS) and browser.find_element(By.ID, "download").is_displayed()
    assert not browser.find_element(By.ID, "submit-error").is_displayed()
    assert last_sent(browser)["keys"] == ["file", "only_mask"]
    wait.until(lambda d: d.find_element(By.ID, "submit").is_enabled())
    screenshot(browser, "browser-error-key.png")

    # change_color never gets only_mask; a bad colour is reported beside the colour field.
    key_input.clear()
    key_input.send_keys(API_KEY)
    press(browser, browser.find_element(By.CSS_SELECTOR, 'input[name="op"][value="change_color"]').find_element(
        By.XPATH, ".."))
    assert browser.find_element(By.ID, "op-sub-color").text == "Solid colour, JPEG"
    assert not browser.find_element(By.ID, "opt-only-mask").is_displayed()
    colour = browser.find_element(By.ID, "color-text")
    colour.clear()
    colour.send_keys("not-a-colour")
    press(browser, browser.find_element(By.ID, "submit"))
    text = assert_error_beside(browser, "color-error", "color-text")
    assert "not-a-colour" in text and "#RRGGBB" in text and "{" not in text
    assert not browser.find_element(By.ID, "api-key-error").is_displayed()
    assert last_sent(browser)["keys"] == ["file", "color"]
    assert browser.find_element(By.ID, "result-img").get_attribute("src") == result_src
    wait.until(lambda d: d.find_element(By.ID, "submit").is_enabled())

    # A good colour replaces the result; PNG output is named in the label.
    colour.clear()
    colour.send_keys("0,128,255")
    Select(browser.find_element(By.ID, "opt-format")).select_by_value("png")
    assert browser.find_element(By.ID, "op-sub-color").text == "Solid colour, PNG"
    press(browser, browser.find_element(By.ID, "submit"))
    wait.until(lambda d: d.find_element(By.ID, "download").get_attribute("download") == "colored_girl-2.png")
    assert last_sent(browser)["keys"] == ["file", "color", "format"]
    assert not browser.find_element(By.ID, "color-error").is_displayed()

    # A file over the limit is refused beside the drop zone, and the result stays.
    result_src = browser.find_element(By.ID, "result-img").get_attribute("src")
    browser.execute_script("window.scrollTo({top: 0, behavior: 'instant'})")
    big = Path(tempfile.mkdtemp(prefix="pixport-big-")) / "too-big.jpg"
    big.write_bytes(PHOTO.read_bytes() + b"\0" * (9 * 1024 * 1024))
    browser.find_element(By.ID, "file").send_keys(str(big))
    text = assert_error_beside(browser, "file-error", "dropzone", "file")
    assert "too-big.jpg" in text and "8 MB" in text
    assert not browser.find_element(By.ID, "submit").is_enabled()
    assert browser.find_element(By.ID, "result-img").get_attribute("src") == result_src
    shutil.rmtree(big.parent)

    # Only this origin was asked for anything; no inline scripts or style attributes; no console errors.
    origins = browser.execute_script(
        "return performance.getEntriesByType('resource').map(e => new URL(e.name).origin);")
    assert set(origins) <= {base_url}, origins
    with urllib.request.urlopen(base_url + "/") as response:
        html = response.read().decode()
        assert "script-src 'self'" in response.headers["Content-Security-Policy"]
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and not re.search(r"\sstyle=|<style", html)
    assert script_errors(browser) == []


# The result's colours and alpha where it is semi-transparent, summed: what the edge options change.
EDGE_PIXELS_JS = RESULT_PIXELS_JS + """
let soft = 0, alpha = 0, colour = 0;
for (let i = 0; i < data.length; i += 4) {
  if (data[i + 3] > 0 && data[i + 3] < 255) { soft++; alpha += data[i + 3]; colour += data[i] + data[i + 1] + data[i + 2]; }
}
return [soft, alpha, colour];
"""


def test_edge_options_start_at_their_defaults_and_switch(base_url: str, browser: WebDriver):
    """Both start checked (the server's defaults), and nothing is sent for them; switched off, they send
    refine=false and decontaminate=false (also in the curl line), and the cutout over a colour changes."""
    wait = open_page(browser, base_url, 1366, 900)
    set_theme(browser, "light")
    refine, decontaminate = browser.find_element(By.ID, "opt-refine"), browser.find_element(By.ID, "opt-decontaminate")
    assert refine.is_displayed() and refine.is_selected() and decontaminate.is_selected()
    cutout(browser, wait)
    assert last_sent(browser)["keys"] == ["file"]
    press(browser, browser.find_element(By.CSS_SELECTOR, 'input[name="result-bg"][value="custom"]').find_element(
        By.XPATH, ".."))
    browser.execute_script("const c = document.getElementById('result-bg-color'); c.value = '#ff00ff';"
                           "c.dispatchEvent(new Event('input'));")
    browser.execute_script(SHOW_VIEWER_JS)
    screenshot(browser, "edges-default.png")
    with_edges = browser.execute_script(EDGE_PIXELS_JS)

    press(browser, refine)
    press(browser, decontaminate)
    assert "-F refine=false -F decontaminate=false" in browser.find_element(By.ID, "curl-now").get_attribute(
        "textContent")
    press(browser, wait.until(EC.element_to_be_clickable((By.ID, "submit"))))
    wait.until(lambda d: d.execute_script("return window.__sent.length") == 2)
    wait.until(lambda d: d.execute_script(RESULT_SHOWN_JS) and d.find_element(By.ID, "submit").is_enabled())
    assert last_sent(browser)["keys"] == ["file", "refine", "decontaminate"]
    wait.until(lambda d: d.execute_script(EDGE_PIXELS_JS) != with_edges)
    browser.execute_script(SHOW_VIEWER_JS)
    screenshot(browser, "edges-switched.png")

    # The mask alone has no colours to clean: that box is greyed out, and not sent.
    browser.execute_script("document.getElementById('more-options').open = true")
    press(browser, browser.find_element(By.ID, "opt-only-mask"))
    assert not decontaminate.is_enabled()
    assert "decontaminate" not in browser.find_element(By.ID, "curl-now").get_attribute("textContent")
    press(browser, browser.find_element(By.ID, "opt-only-mask"))
    press(browser, refine)
    press(browser, decontaminate)
    assert script_errors(browser) == []


def test_phone_layout(base_url: str, browser: WebDriver):
    wait = open_page(browser, base_url, 390, 844)
    set_theme(browser, "light")
    cutout(browser, wait)
    inner = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
    assert inner[0] <= inner[1], f"horizontal overflow at phone width: {inner}"
    picture = rect(browser, "result-img")
    assert picture["width"] >= inner[1] - 2 and picture["x"] >= -1, picture  # edge to edge
    assert browser.find_element(By.ID, "split").is_displayed()
    browser.execute_script("document.getElementById('compare').scrollIntoView({block: 'center'})")
    screenshot(browser, "browser-phone.png")
    # A cropped WebP has another framing than the photo: shown alone, whole, without the slider.
    Select(browser.find_element(By.ID, "opt-format")).select_by_value("webp")
    press(browser, browser.find_element(By.ID, "opt-crop"))
    browser.find_element(By.ID, "opt-crop-margin").send_keys("4%")
    press(browser, browser.find_element(By.ID, "submit"))
    wait.until(lambda d: d.find_element(By.ID, "download").get_attribute("download") == "nobg_girl-2.webp")
    assert last_sent(browser)["keys"] == ["file", "format", "crop", "crop_margin"]
    assert not browser.find_element(By.ID, "compare").is_displayed()
    assert browser.find_element(By.ID, "compare-note").is_displayed()
    assert shown_at(browser, 0.05) == "result-img" and shown_at(browser, 0.95) == "result-img"
    natural = browser.execute_script("const i = document.getElementById('result-img'); return [i.naturalWidth, i.naturalHeight];")
    assert natural != [718, 478], "cropped to the subject"
    inner = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth];")
    assert inner[0] <= inner[1], f"horizontal overflow at phone width: {inner}"
    # A field name in the docs table is never split across lines.
    lines = browser.execute_script(
        "const c = [...document.querySelectorAll('.fields code')].find(c => c.textContent === 'max_dimension');"
        "return c.getClientRects().length;")
    assert lines == 1
    assert script_errors(browser) == []


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_theme_and_contrast(base_url: str, browser: WebDriver, scheme: str):
    open_page(browser, base_url, 1366, 900)
    set_theme(browser, scheme)
    page_bg = browser.execute_script("return getComputedStyle(document.body).backgroundColor")
    ink = browser.execute_script("return getComputedStyle(document.body).color")
    if scheme == "dark":
        assert luminance(page_bg) < 0.05 and luminance(ink) > 0.6, (page_bg, ink)
        assert browser.execute_script("return matchMedia('(prefers-color-scheme: dark)').matches")
    else:
        assert luminance(page_bg) > 0.8 and luminance(ink) < 0.05, (page_bg, ink)
    low = [(name, fg, bg, round(contrast(fg, bg), 2)) for name, fg, bg in browser.execute_script(COLOURS_JS)
           if contrast(fg, bg) < 4.5]
    assert low == [], low
    # max_dimension stays on one line in the desktop table too.
    assert browser.execute_script(
        "return [...document.querySelectorAll('.fields code')].find(c => c.textContent === 'max_dimension')"
        ".getClientRects().length;") == 1
    if scheme == "dark":
        wait = WebDriverWait(browser, 30, poll_frequency=0.1)
        cutout(browser, wait)
        browser.execute_script(SHOW_VIEWER_JS)
        screenshot(browser, "browser-desktop-dark.png")
    set_theme(browser, "light")
    assert script_errors(browser) == []


@pytest.mark.parametrize("key", [None, "s3cret-page-key"])
def test_curl_examples_name_the_key_header_only_when_needed(make_app, key: str | None):
    """Rendered without a browser: the guarded examples carry the header iff API_KEY is set; never the key."""
    app = make_app(API_KEY=key) if key else make_app()
    page = app.test_client().get("/").get_data(as_text=True)
    examples = [html.unescape(code) for code in re.findall(r"<pre><code>(.*?)</code></pre>", page, re.S)]
    guarded = [code for code in examples if re.search(r"/(remove|change_color|clear_cache)\b", code)]
    assert len(guarded) == 5 and len(examples) == 7, examples
    for code in guarded:
        assert ('-H "X-API-Key: $PIXPORT_API_KEY"' in code) == bool(key), code
    assert all("-H" not in code for code in examples if code not in guarded)
    if key:
        assert key not in page
