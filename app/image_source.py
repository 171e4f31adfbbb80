"""The two ways in besides a multipart upload: `image_url` (fetched with SSRF guards) and `image_file_b64`.

Both end as a seekable stream spooled like an upload (in memory up to 500 KB, then an anonymous temp
file in UPLOAD_FOLDER), which then goes through exactly the same header checks and pipeline.

image_url: every address a host name resolves to must be public (unless IMAGE_URL_ALLOW_PRIVATE),
and the connection goes to the address that was checked, not to a second lookup of the name, so a
DNS answer that changes between check and connect (rebinding) cannot redirect the request inside.
HTTPS still sends the name for SNI and verifies the certificate against it.
"""
from __future__ import annotations

import base64
import ipaddress
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote, urljoin, urlsplit

from app.config import UPLOAD_IN_MEMORY_BYTES, Config
from app.errors import ApiError, BadRequest, TooLarge

if TYPE_CHECKING:
    import requests

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_REDIRECTS = 3
MAX_URL_LENGTH = 2048
CHUNK_BYTES = 64 * 1024
USER_AGENT = "pixport-isnet-tiny (image_url fetcher)"
REDIRECT_STATUSES = {301, 302, 303, 307, 308}
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_WHITESPACE = re.compile(r"\s+")
_URLSAFE = str.maketrans("-_", "+/")


def spool(folder: Path) -> IO[bytes]:
    """A temp file like an upload's: in memory while small, then anonymous on disk in `folder`."""
    return tempfile.SpooledTemporaryFile(max_size=UPLOAD_IN_MEMORY_BYTES, mode="w+b", dir=folder)  # type: ignore[return-value]


# ---------------------------------------------------------------- image_file_b64

def decode_base64(text: str, max_bytes: int, folder: Path) -> IO[bytes]:
    """Plain base64 (standard or URL-safe alphabet, padding optional, line breaks allowed) or a
    `data:<type>;base64,` URL -> a spooled stream. 400 when invalid, 413 when the encoded length
    alone says the image would be over max_bytes (checked before decoding)."""
    text = text.strip()
    if text[:5].lower() == "data:":
        comma = text.find(",", 0, 200)
        if comma < 0 or "base64" not in text[5:comma].lower().split(";")[1:]:
            raise BadRequest("image_file_b64: a data: URL must be base64, e.g. data:image/png;base64,iVBORw0...")
        text = text[comma + 1:]
    if _WHITESPACE.search(text):
        text = _WHITESPACE.sub("", text)
    if not text:
        raise BadRequest("image_file_b64 is empty; send the image's bytes as base64")
    unpadded = len(text.rstrip("="))
    if unpadded * 3 // 4 > max_bytes:
        raise TooLarge(f"image_file_b64 encodes more than {max_bytes // (1024 * 1024)} MB; send a smaller image")
    if unpadded % 4 == 1:
        raise BadRequest("image_file_b64 is not valid base64 (its length is impossible); was it cut off?")
    text = text.rstrip("=").translate(_URLSAFE)
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise BadRequest("image_file_b64 is not valid base64 (only A-Z, a-z, 0-9, +, / or -, _ and = padding)") from None
    stream = spool(folder)
    stream.write(data)
    del data
    stream.seek(0)
    return stream


# ---------------------------------------------------------------- image_url: addresses

def refusal(address: IPAddress) -> str | None:
    """Why image_url may not reach this address ("loopback", "private"...), or None for a public one.

    IPv6 addresses that embed an IPv4 one (::ffff:a.b.c.d, 6to4, NAT64) are judged by it as well.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and (reason := refusal(embedded)) is not None:
            return reason
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("not globally routable", not address.is_global),
    )
    return next((label for label, hit in checks if hit), None)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the name resolves to (or the literal itself), without duplicates, in resolver order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise BadRequest(f"image_url: the host {host!r} cannot be resolved") from None
    found: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in found:
            found.append(address)
    if not found:
        raise BadRequest(f"image_url: the host {host!r} has no address")
    return found


def allowed_addresses(host: str, port: int, allow_private: bool) -> list[IPAddress]:
    """The host's addresses, all of them checked: one non-public address refuses the whole name."""
    addresses = resolve(host, port)
    if not allow_private:
        for address in addresses:
            reason = refusal(address)
            if reason is not None:  # the address itself is not echoed: no map of internal names for callers
                raise BadRequest(
                    f"image_url: {host!r} is or resolves to a {reason} address; only public addresses are fetched"
                )
    return addresses


# ---------------------------------------------------------------- image_url: fetching

@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent

    @property
    def host_header(self) -> str:
        name = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return name if self.port == default else f"{name}:{self.port}"

    def url_for(self, address: IPAddress) -> str:
        literal = f"[{address}]" if address.version == 6 else str(address)
        return f"{self.scheme}://{literal}:{self.port}{self.path}"


def parse_target(url: str) -> Target:
    """An http(s) URL with a host and no credentials; 400 otherwise."""
    if len(url) > MAX_URL_LENGTH:
        raise BadRequest(f"image_url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadRequest(f"image_url is not a valid URL ({exc})") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise BadRequest(f"image_url must be an http:// or https:// URL, not {(scheme or 'no scheme')[:20]!r}")
    if not parts.hostname:
        raise BadRequest("image_url has no host")
    if parts.username is not None or parts.password is not None:
        raise BadRequest("image_url must not carry a user name or password")
    try:
        host = parts.hostname.encode("idna").decode("ascii")  # an international name in its DNS form
    except UnicodeError:
        raise BadRequest(f"image_url: the host name {parts.hostname[:60]!r} is not valid") from None
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Target(scheme, host, port or (443 if scheme == "https" else 80), path)


def url_filename(url: str) -> str:
    """The last segment of the URL's path, percent-decoded: the caller turns it into a download stem."""
    return unquote(urlsplit(url).path.rstrip("/").rsplit("/", 1)[-1])


def _pinned_adapter(host: str) -> "requests.adapters.HTTPAdapter":
    """An adapter whose HTTPS connections send `host` for SNI and verify the certificate against it,
    while the socket goes to the IP address in the URL."""
    from requests.adapters import HTTPAdapter

    adapter = HTTPAdapter(max_retries=0)
    adapter.init_poolmanager(1, 1, server_hostname=host, assert_hostname=host)
    return adapter


def _timeout_error(host: str, seconds: float) -> ApiError:
    return ApiError(f"image_url: {host} did not answer within {seconds:g} s (IMAGE_URL_TIMEOUT_S)", 504)


def _session(target: Target) -> "requests.Session":
    import requests

    session = requests.Session()
    session.trust_env = False  # no proxies or netrc from the environment: the checked address is the one reached
    if target.scheme == "https":
        session.mount("https://", _pinned_adapter(target.host))
    return session


def _request(session: "requests.Session", target: Target, addresses: list[IPAddress], timeout: float,
             verify: bool | str) -> "requests.Response":
    """GET through the first checked address that accepts a connection; no redirects followed here."""
    import requests

    headers = {"Host": target.host_header, "User-Agent": USER_AGENT, "Accept": "image/*",
               "Accept-Encoding": "identity"}
    failure = "no address"
    for address in addresses:
        try:
            return session.get(target.url_for(address), headers=headers, stream=True, allow_redirects=False,
                               timeout=(timeout, timeout), verify=verify)
        except requests.exceptions.SSLError as exc:
            raise BadRequest(f"image_url: the TLS connection to {target.host} failed ({_short(exc)})") from None
        except requests.exceptions.Timeout:
            raise _timeout_error(target.host, timeout) from None
        except requests.exceptions.ConnectionError as exc:
            failure = _short(exc)
        except requests.exceptions.RequestException as exc:
            raise BadRequest(f"image_url: the request to {target.host} failed ({_short(exc)})") from None
    raise BadRequest(f"image_url: could not connect to {target.host} ({failure})")


def _short(exc: BaseException) -> str:
    """The innermost reason of a requests/urllib3 error, without addresses' object reprs."""
    while exc.args and isinstance(exc.args[0], BaseException):
        exc = exc.args[0]
    reason = getattr(exc, "reason", None)
    text = str(reason if isinstance(reason, BaseException) else exc)
    return text.rsplit(": ", 1)[-1][:160]


def _download(response: "requests.Response", host: str, max_bytes: int, deadline: float, timeout: float,
              folder: Path) -> IO[bytes]:
    """Stream the body into a spool, stopping as soon as it passes max_bytes or the deadline.

    read1 returns what one socket read brings, so a server that trickles bytes is caught by the
    deadline after at most one read timeout (read(n) would wait for all n bytes).
    """
    from urllib3.exceptions import HTTPError, ReadTimeoutError

    limit_mb = max_bytes // (1024 * 1024)
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise TooLarge(f"image_url: the image is {int(declared):,} bytes; the limit is {limit_mb} MB")
    stream = spool(folder)
    size = 0
    try:
        while chunk := response.raw.read1(CHUNK_BYTES, decode_content=True):
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"image_url: the image is larger than {limit_mb} MB; send a smaller image")
            if time.monotonic() > deadline:
                raise _timeout_error(host, timeout)
            stream.write(chunk)
    except ReadTimeoutError:
        stream.close()
        raise _timeout_error(host, timeout) from None
    except HTTPError as exc:
        stream.close()
        raise BadRequest(f"image_url: the download from {host} broke off ({_short(exc)})") from None
    except ApiError:
        stream.close()
        raise
    if size == 0:
        stream.close()
        raise BadRequest(f"image_url: {host} answered with an empty body")
    stream.seek(0)
    return stream


def fetch(url: str, config: Config, verify: bool | str = True) -> IO[bytes]:
    """Download an image_url into a spool, re-checking every redirect (at most MAX_REDIRECTS).

    `verify` is requests' TLS verification: True (the certifi bundle) or a CA file.
    400 for a refused or unreachable URL or a non-2xx answer, 413 past MAX_FILE_SIZE_MB, 504 on timeout.
    """
    timeout = config.image_url_timeout_s
    deadline = time.monotonic() + timeout
    current = url.strip()
    for hop in range(MAX_REDIRECTS + 1):
        target = parse_target(current)
        addresses = allowed_addresses(target.host, target.port, config.image_url_allow_private)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout_error(target.host, timeout)
        with _session(target) as session, _request(session, target, addresses, min(timeout, remaining),
                                                   verify) as response:
            location = response.headers.get("Location")
            if response.status_code in REDIRECT_STATUSES and location:
                if hop == MAX_REDIRECTS:
                    raise BadRequest(f"image_url: more than {MAX_REDIRECTS} redirects; give the image's final URL")
                current = urljoin(current, location)
                continue
            if not 200 <= response.status_code < 300:
                raise BadRequest(
                    f"image_url: {target.host} answered {response.status_code} {(response.reason or '')[:60]}".rstrip()
                    + "; the URL must return the image itself"
                )
            return _download(response, target.host, config.max_content_length, deadline, timeout,
                             config.upload_folder)
    raise AssertionError("unreachable: the loop returns or raises")
