"""image_url and image_file_b64 (issue 12, point 3), against loopback HTTP(S) servers started here.

Loopback is itself a refused address, so the fetching tests run with IMAGE_URL_ALLOW_PRIVATE=1 or
with DNS answers faked for made-up names; the refusal paths run without it.
"""
from __future__ import annotations

import base64
import http.server
import ipaddress
import shutil
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Iterator
from urllib.parse import unquote

import pytest
from PIL import Image

from app import image_source
from app.config import Config
from app.errors import ApiError
from tests.conftest import LoopbackServer, image_bytes, photo
from tests.test_api import assert_json_error

# How an image arrives is under test, not the mask: the apps run on the disc model, not u2netp.
pytestmark = pytest.mark.disc_model

PNG = image_bytes(photo((96, 64)), "PNG")


class Handler(http.server.BaseHTTPRequestHandler):
    """Routes: /img/<name> an image; /redirect/N N+1 redirects to the image; /to/<url> a redirect to
    that URL; /missing 404; /text HTML; /empty; /big and /big-unsized over 1 MB; /slow a late answer."""

    hits: list[tuple[str, str]]  # (path, Host header), set per server

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", content_type: str = "image/png",
              headers: dict[str, str] | None = None, sized: bool = True) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        if sized:
            self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self.hits.append((self.path, self.headers.get("Host", "")))
        path = self.path
        if path.startswith("/img/"):
            self._send(200, PNG)
        elif path.startswith("/redirect/"):
            left = int(path.rsplit("/", 1)[1])
            self._send(302, headers={"Location": f"/redirect/{left - 1}" if left else "../img/after-redirects.png"})
        elif path.startswith("/to/"):
            self._send(302, headers={"Location": unquote(path[len("/to/"):])})
        elif path == "/missing":
            self._send(404, b"not here", "text/plain")
        elif path == "/text":
            self._send(200, b"<html><body>" + b"not an image " * 50 + b"</body></html>", "text/html")
        elif path == "/empty":
            self._send(200, b"")
        elif path == "/big":
            self._send(200, b"\x89PNG" + b"\0" * (1536 * 1024))
        elif path == "/big-unsized":
            self.close_connection = True
            self._send(200, b"\x89PNG" + b"\0" * (1536 * 1024), sized=False)
        elif path == "/slow":
            time.sleep(2)
            self._send(200, PNG)
        elif path == "/drip":  # headers at once, then 100 bytes every 0.1 s: no single read ever times out
            self.send_response(200)
            self.send_header("Content-Length", "20000")
            self.end_headers()
            for _ in range(200):
                self.wfile.write(b"\0" * 100)
                self.wfile.flush()
                time.sleep(0.1)
        else:
            self._send(404, b"", "text/plain")


def serve(ssl_context: ssl.SSLContext | None = None) -> tuple[LoopbackServer, list]:
    hits: list[tuple[str, str]] = []
    handler = type("BoundHandler", (Handler,), {"hits": hits})
    server = LoopbackServer(("127.0.0.1", 0), handler)
    if ssl_context is not None:
        server.socket = ssl_context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, hits


@pytest.fixture
def origin() -> Iterator[tuple[str, list]]:
    """(base URL of a loopback image server, the list of (path, Host) it was asked for)."""
    server, hits = serve()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


@pytest.fixture
def open_client(make_app):
    """A client whose image_url may reach private addresses (the loopback test server)."""
    return make_app(IMAGE_URL_ALLOW_PRIVATE="1", IMAGE_URL_TIMEOUT_S="1").test_client()


def fake_dns(monkeypatch, answers: dict[str, list[str]]) -> list[str]:
    """Make socket.getaddrinfo answer `answers` for those names (other names resolve normally); returns the lookups."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if host in answers:
            lookups.append(host)
            return [
                (socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port, 0, 0) if ":" in ip else (ip, port))
                for ip in answers[host]
            ]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(image_source.socket, "getaddrinfo", getaddrinfo)
    return lookups


def image_of(response) -> Image.Image:
    assert response.status_code == 200, response.get_json()
    return Image.open(__import__("io").BytesIO(response.data))


# ---------------------------------------------------------------- the address classifier

@pytest.mark.parametrize("address, reason", [
    ("10.0.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("127.0.0.1", "loopback"), ("127.8.8.8", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"),
    ("240.0.0.1", "reserved"), ("fc00::1", "private"),
    ("100.64.0.1", "not globally routable"),
    ("::ffff:10.0.0.1", "private"), ("::ffff:127.0.0.1", "loopback"),
    ("2002:a00:1::", "private"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("93.184.216.34", None), ("8.8.8.8", None), ("2606:4700:4700::1111", None),
])
def test_refusal_classifies_addresses(address, reason):
    assert image_source.refusal(ipaddress.ip_address(address)) == reason


@pytest.mark.parametrize("answer, reason", [
    (["10.0.0.1"], "private"),
    (["169.254.169.254"], "link-local"),
    (["::1"], "loopback"),
    (["93.184.216.34", "10.0.0.1"], "private"),  # one bad address among good ones refuses the name
    (["2606:2800:220:1::1", "::ffff:169.254.169.254"], "link-local"),
])
def test_every_resolved_address_is_checked(monkeypatch, answer, reason):
    fake_dns(monkeypatch, {"images.example": answer})
    with pytest.raises(ApiError) as caught:
        image_source.allowed_addresses("images.example", 80, allow_private=False)
    message = caught.value.message
    assert caught.value.status == 400 and reason in message and "images.example" in message
    assert not any(address in message for address in answer)  # internal addresses are not echoed


def test_public_addresses_pass_and_private_ones_pass_when_allowed(monkeypatch):
    fake_dns(monkeypatch, {"images.example": ["93.184.216.34", "2606:2800:220:1::1"], "inside.example": ["10.0.0.1"]})
    assert [str(a) for a in image_source.allowed_addresses("images.example", 443, False)] == [
        "93.184.216.34", "2606:2800:220:1::1"]
    assert [str(a) for a in image_source.allowed_addresses("inside.example", 80, True)] == ["10.0.0.1"]


# ---------------------------------------------------------------- image_url through the API

def test_image_url_is_fetched_and_named_after_the_path(open_client, origin):
    base, hits = origin
    response = open_client.post("/api/bg/remove", data={"image_url": f"{base}/img/holiday%20pic.png?size=large"})
    assert image_of(response).size == (96, 64)
    assert "filename=nobg_holiday_pic.png" in response.headers["Content-Disposition"]
    assert hits == [("/img/holiday%20pic.png?size=large", base.removeprefix("http://"))]


def test_image_url_works_urlencoded_and_on_change_color(open_client, origin):
    base, _ = origin
    response = open_client.post("/api/bg/change_color", data={"image_url": f"{base}/img/x.png", "bg_color": "blue"},
                                content_type="application/x-www-form-urlencoded")
    assert image_of(response).mode == "RGB"
    assert "filename=colored_x.jpg" in response.headers["Content-Disposition"]


def test_loopback_is_refused_without_allow_private(client, origin):
    base, hits = origin
    message = assert_json_error(client.post("/api/bg/remove", data={"image_url": f"{base}/img/a.png"}), 400)
    assert "loopback" in message and "127.0.0.1" in message
    assert hits == []  # refused before connecting


def test_localhost_name_is_refused(client):
    assert "loopback" in assert_json_error(client.post("/api/bg/remove", data={"image_url": "http://localhost:1/a.png"}), 400)


def test_redirects_are_followed_up_to_three(open_client, origin):
    base, hits = origin
    response = open_client.post("/api/bg/remove", data={"image_url": f"{base}/redirect/2"})
    assert image_of(response).size == (96, 64)
    assert [path for path, _ in hits] == ["/redirect/2", "/redirect/1", "/redirect/0", "/img/after-redirects.png"]
    assert "filename=nobg_2.png" in response.headers["Content-Disposition"]  # the URL the client gave
    message = assert_json_error(open_client.post("/api/bg/remove", data={"image_url": f"{base}/redirect/3"}), 400)
    assert "redirects" in message


def test_a_redirect_to_a_private_address_is_refused(make_app, origin, monkeypatch):
    """The first hop is a public-looking name (faked to reach the loopback server); its redirect points inside."""
    base, hits = origin
    port = base.rsplit(":", 1)[1]
    lookups = fake_dns(monkeypatch, {"public.example": ["127.0.0.1"], "metadata.example": ["169.254.169.254"]})
    real = image_source.refusal
    monkeypatch.setattr(image_source, "refusal",
                        lambda address: None if str(address) == "127.0.0.1" else real(address))
    client = make_app().test_client()
    for target, reason in [("http://169.254.169.254/latest/meta-data/", "link-local"),
                           ("http://metadata.example/x", "link-local"),
                           ("http://10.0.0.1/x", "private"), ("http://[::1]/x", "loopback"),
                           ("file:///etc/passwd", "http")]:
        response = client.post("/api/bg/remove", data={"image_url": f"http://public.example:{port}/to/{target}"})
        assert reason in assert_json_error(response, 400)
    assert {unquote(path) for path, _ in hits} == {f"/to/{t}" for t in (
        "http://169.254.169.254/latest/meta-data/", "http://metadata.example/x", "http://10.0.0.1/x",
        "http://[::1]/x", "file:///etc/passwd")}
    assert "metadata.example" in lookups


def test_the_connection_goes_to_the_checked_address(make_app, origin, monkeypatch):
    """A name only our resolver knows: the request reaches the address checked, with the name as Host,
    and the name is resolved once (requests never looks it up again, so rebinding has no second answer)."""
    base, hits = origin
    port = base.rsplit(":", 1)[1]
    lookups = fake_dns(monkeypatch, {"pinned.example": ["127.0.0.1"]})
    client = make_app(IMAGE_URL_ALLOW_PRIVATE="1").test_client()
    response = client.post("/api/bg/remove", data={"image_url": f"http://pinned.example:{port}/img/p.png"})
    assert image_of(response).size == (96, 64)
    assert hits == [("/img/p.png", f"pinned.example:{port}")]
    assert lookups == ["pinned.example"]


@pytest.mark.parametrize("path, status, words", [
    ("/missing", 400, "404"),
    ("/text", 415, "not an image"),
    ("/empty", 400, "empty"),
])
def test_upstream_failures_are_clear(open_client, origin, path, status, words):
    base, _ = origin
    assert words in assert_json_error(open_client.post("/api/bg/remove", data={"image_url": base + path}), status)


@pytest.mark.parametrize("path", ["/big", "/big-unsized"])
def test_an_oversized_body_is_413(make_app, origin, path):
    base, _ = origin
    client = make_app(IMAGE_URL_ALLOW_PRIVATE="1", MAX_FILE_SIZE_MB="1").test_client()
    assert "1 MB" in assert_json_error(client.post("/api/bg/remove", data={"image_url": base + path}), 413)


def test_a_slow_server_is_504(make_app, origin):
    base, _ = origin
    client = make_app(IMAGE_URL_ALLOW_PRIVATE="1", IMAGE_URL_TIMEOUT_S="0.3").test_client()
    started = time.monotonic()
    message = assert_json_error(client.post("/api/bg/remove", data={"image_url": f"{base}/slow"}), 504)
    assert "IMAGE_URL_TIMEOUT_S" in message and time.monotonic() - started < 1.5


def test_a_trickling_server_is_cut_off_at_the_deadline(make_app, origin):
    base, _ = origin
    client = make_app(IMAGE_URL_ALLOW_PRIVATE="1", IMAGE_URL_TIMEOUT_S="0.5").test_client()
    started = time.monotonic()
    assert_json_error(client.post("/api/bg/remove", data={"image_url": f"{base}/drip"}), 504)
    assert time.monotonic() - started < 2.0


def test_nothing_listening_is_400(open_client):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert "connect" in assert_json_error(open_client.post("/api/bg/remove", data={"image_url": f"http://127.0.0.1:{port}/a.png"}), 400)


@pytest.mark.parametrize("url, words", [
    ("ftp://example.com/a.png", "http"),
    ("file:///etc/passwd", "http"),
    ("javascript:alert(1)", "http"),
    ("http:///a.png", "host"),
    ("http://user:secret@example.com/a.png", "password"),
    ("http://example.com:99999/a.png", "valid URL"),
    ("", "empty"),
    ("http://no-such-host.invalid/a.png", "resolved"),
    ("http://example.com/" + "a" * 3000, "longer"),
])
def test_bad_image_urls_are_400(client, url, words):
    assert words in assert_json_error(client.post("/api/bg/remove", data={"image_url": url}), 400)


# ---------------------------------------------------------------- HTTPS: SNI and certificate checks against the name

@pytest.fixture
def https_origin(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """An HTTPS loopback server with a self-signed certificate for 'pinned.example'; (port, cert file)."""
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=pinned.example", "-addext", "subjectAltName=DNS:pinned.example",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server, _ = serve(context)
    yield server.server_address[1], cert
    server.shutdown()
    server.server_close()


def test_https_verifies_the_certificate_against_the_name_not_the_address(https_origin, monkeypatch, env):
    port, cert = https_origin
    fake_dns(monkeypatch, {"pinned.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    config = Config.from_env({**env, "IMAGE_URL_ALLOW_PRIVATE": "1"})
    stream = image_source.fetch(f"https://pinned.example:{port}/img/a.png", config, verify=str(cert))
    assert stream.read() == PNG
    with pytest.raises(ApiError) as caught:
        image_source.fetch(f"https://other.example:{port}/img/a.png", config, verify=str(cert))
    assert caught.value.status == 400 and "TLS" in caught.value.message


# ---------------------------------------------------------------- image_file_b64

def b64(data: bytes = PNG) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("make", [
    lambda: b64(),
    lambda: "data:image/png;base64," + b64(),
    lambda: "DATA:image/png;charset=binary;BASE64," + b64(),
    lambda: "\n".join(b64()[i:i + 76] for i in range(0, len(b64()), 76)),  # wrapped like base64(1)
    lambda: base64.urlsafe_b64encode(PNG).decode().rstrip("="),  # URL-safe, unpadded
])
def test_base64_forms_are_accepted(tmp_path, make: Callable[[], str]):
    assert image_source.decode_base64(make(), 1024 * 1024, tmp_path).read() == PNG


def test_image_file_b64_through_the_api(client):
    response = client.post("/api/bg/remove", data={"image_file_b64": "data:image/png;base64," + b64()})
    assert image_of(response).size == (96, 64)
    assert "filename=nobg_image.png" in response.headers["Content-Disposition"]


@pytest.mark.parametrize("text, status, words", [
    ("not base64 at all!", 400, "base64"),
    ("QUJD" + "A", 400, "base64"),  # a length no base64 can have
    ("data:image/png,iVBORw0KGgo=", 400, "data:"),
    ("", 400, "empty"),
    ("   ", 400, "empty"),
    ("aGVsbG8gd29ybGQ=", 415, "not an image"),  # valid base64 of text
])
def test_bad_base64_is_refused(client, text, status, words):
    assert words in assert_json_error(client.post("/api/bg/remove", data={"image_file_b64": text}), status)


def test_oversized_base64_is_413_before_decoding(make_app, monkeypatch):
    client = make_app(MAX_FILE_SIZE_MB="1").test_client()
    decoded: list[int] = []
    real = image_source.base64.b64decode
    monkeypatch.setattr(image_source.base64, "b64decode", lambda *a, **k: decoded.append(1) or real(*a, **k))
    text = "A" * (1024 * 1024 * 4 // 3 + 8)
    assert "1 MB" in assert_json_error(client.post("/api/bg/remove", data={"image_file_b64": text}), 413)
    assert decoded == []


def test_base64_up_to_the_limit_fits_through_the_form(make_app):
    """A ~0.9 MB image is ~1.2 MB of base64: more than Werkzeug's default 500 KB for a text field."""
    import numpy as np

    noise = np.random.default_rng(0).integers(0, 256, (540, 540, 3), dtype=np.uint8)
    data = image_bytes(Image.fromarray(noise, "RGB"), "PNG")
    assert 800_000 < len(data) < 1024 * 1024
    client = make_app(MAX_FILE_SIZE_MB="1").test_client()
    assert image_of(client.post("/api/bg/remove", data={"image_file_b64": "data:image/png;base64," + b64(data)})).size == (540, 540)


def test_decode_base64_spools_large_images_to_the_upload_folder(tmp_path):
    stream = image_source.decode_base64(b64(b"x" * 600_000), 1024 * 1024, tmp_path)
    assert stream._rolled  # type: ignore[attr-defined]  (SpooledTemporaryFile went to disk)
    assert stream.read() == b"x" * 600_000


def test_parse_target_normalises_the_host():
    target = image_source.parse_target("http://Bücher.example:8080/a b.png?x=1")
    assert (target.host, target.port, target.path, target.host_header) == (
        "xn--bcher-kva.example", 8080, "/a b.png?x=1", "xn--bcher-kva.example:8080")
    assert image_source.parse_target("https://[2606:4700::1]/x").url_for(ipaddress.ip_address("2606:4700::1")) == \
        "https://[2606:4700::1]:443/x"
    with pytest.raises(ApiError):
        image_source.parse_target("http://a..b/x")


def test_config_reads_and_checks_the_image_url_settings(tmp_path):
    from app.config import ConfigError

    defaults = Config.from_env({"MODEL_DIR": str(tmp_path)})
    assert (defaults.image_url_allow_private, defaults.image_url_timeout_s) == (False, 10.0)
    config = Config.from_env({"MODEL_DIR": str(tmp_path), "IMAGE_URL_ALLOW_PRIVATE": "1", "IMAGE_URL_TIMEOUT_S": "2.5"})
    assert (config.image_url_allow_private, config.image_url_timeout_s) == (True, 2.5)
    for name, value in (("IMAGE_URL_ALLOW_PRIVATE", "maybe"), ("IMAGE_URL_TIMEOUT_S", "0"), ("IMAGE_URL_TIMEOUT_S", "soon")):
        with pytest.raises(ConfigError, match=name):
            Config.from_env({"MODEL_DIR": str(tmp_path), name: value})
