"""remove.bg's API (`POST /v1.0/removebg`, `GET /v1.0/account`) translated onto the one pipeline.

Existing remove.bg clients switch to this server by changing their base URL. This module only translates:
remove.bg's field names and values become pipeline.Options, the pipeline's errors become remove.bg's
`{"errors": [{"title", "code", "detail"}]}` with its statuses and codes, and the result gets remove.bg's
headers (and its JSON form for `Accept: application/json`). No decoding, masking or encoding happens here.
"""
from __future__ import annotations

import base64
from contextlib import ExitStack, closing, contextmanager
from typing import IO, Any, Iterator

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app import image_source, pipeline
from app.api.bg_removal_api import file_stream, image_source_of, key_problem
from app.api.fields import Fields, read_fields
from app.config import Config
from app.errors import ApiError, BadRequest, Busy, CorruptImage, ResolutionTooHigh, TooLarge, Unavailable, \
    UnsupportedMedia

bp = Blueprint("removebg", __name__, url_prefix="/v1.0")

SOURCES = ("image_file", "image_url", "image_file_b64")
FIELDS: tuple[str, ...] = (
    *SOURCES, "size", "type", "type_level", "format", "roi", "crop", "crop_margin", "scale", "position",
    "channels", "add_shadow", "semitransparency", "bg_color", "bg_image_url", "bg_image_file",
    "refine", "decontaminate",  # this server's extensions, as /api/bg names them
)
FILE_FIELDS = frozenset({"image_file", "bg_image_file"})
# remove.bg's sizes as a cap on the result's megapixels (None: the original, up to this server's own limits).
SIZES: dict[str, float | None] = {"preview": 0.25, "small": 0.25, "regular": 0.25, "medium": 1.5, "hd": 4.0,
                                  "full": None, "4k": None, "auto": None}
FORMATS = {"auto": "auto", "png": "png", "jpg": "jpeg", "jpeg": "jpeg", "zip": "zip", "webp": "webp"}
CHANNELS = ("rgba", "alpha")
DETECTED_TYPE = "other"  # no classifier here: the one model segments every kind of foreground alike
TITLES = {
    "missing_source": "No image given", "multiple_sources": "More than one image given",
    "unknown_parameter": "Unknown parameter", "invalid_request": "Invalid request",
    "invalid_file": "Unreadable image file", "failed_image_download": "Failed to download the image",
    "file_too_large": "File too large", "resolution_too_high": "Resolution too high",
    "unknown_foreground": "Could not identify foreground in image",
    "unsupported_type": "Unsupported foreground type", "unsupported_type_level": "Unsupported type level",
    "unsupported_add_shadow": "Shadows are not supported", "auth_failed": "Missing API Key",
    "rate_limit_exceeded": "Rate limit exceeded", "service_unavailable": "Service unavailable",
    "multiple_backgrounds": "More than one background given",
}
# Statuses the HTTP layer raises before any view runs (no route, wrong method...), by remove.bg-style code.
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


class RemoveBgError(ApiError):
    """A failure in remove.bg's terms: HTTP status, remove.bg's error code, a short title and the detail."""

    def __init__(self, code: str, detail: str, status: int = 400, title: str | None = None,
                 retry_after: int | None = None) -> None:
        super().__init__(detail, status, retry_after)
        self.code = code
        self.title = title or TITLES.get(code, code.replace("_", " ").capitalize())


def _config() -> Config:
    return current_app.config["PIXPORT"]


@contextmanager
def coded(code: str) -> Iterator[None]:
    """A 400 from the pipeline's own parsers, under remove.bg's code for the field."""
    try:
        yield
    except BadRequest as exc:
        raise RemoveBgError(code, exc.message) from None


def translate(exc: ApiError) -> RemoveBgError:
    """The pipeline's errors (by class) as remove.bg's: its statuses are 400 / 402 / 403 / 429."""
    if isinstance(exc, RemoveBgError):
        return exc
    if isinstance(exc, Busy):
        return RemoveBgError("rate_limit_exceeded", exc.message, 429, retry_after=exc.retry_after)
    if isinstance(exc, Unavailable):
        return RemoveBgError("service_unavailable", exc.message, 503, retry_after=exc.retry_after)
    if isinstance(exc, ResolutionTooHigh):
        return RemoveBgError("resolution_too_high", exc.message)
    if isinstance(exc, TooLarge):
        return RemoveBgError("file_too_large", exc.message)
    if isinstance(exc, (UnsupportedMedia, CorruptImage)):
        return RemoveBgError("invalid_file", exc.message)
    return RemoveBgError("invalid_request", exc.message, exc.status if exc.status < 500 else 400)


def owns(path: str) -> bool:
    """Whether a request path is remove.bg's: every answer under /v1.0 uses remove.bg's error shape."""
    return path == bp.url_prefix or path.startswith(f"{bp.url_prefix}/")


def _as_removebg(exc: Exception, status: int, message: str) -> RemoveBgError:
    """Any failure the app's handler answered (its status and message) in remove.bg's terms."""
    if isinstance(exc, ApiError):
        return translate(exc)
    if isinstance(exc, RequestEntityTooLarge):
        return RemoveBgError("file_too_large", message)
    if isinstance(exc, HTTPException):
        code = HTTP_CODES.get(status, "invalid_request")
        return RemoveBgError(code, message, status, title=exc.name)
    return RemoveBgError("internal_error", message, 500, title="Internal error")


def reshape(exc: Exception, response: Response) -> Response:
    """The app's `{"error": ...}` answer as `{"errors": [{"title", "code", "detail"}]}`, keeping its headers
    (Allow, Retry-After, X-Request-ID): remove.bg clients read errors[0].title and map statuses."""
    error = _as_removebg(exc, response.status_code, (response.get_json(silent=True) or {}).get("error", ""))
    response.set_data(current_app.json.dumps(
        {"errors": [{"title": error.title, "code": error.code, "detail": error.message}]}))
    response.status_code = error.status
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response


@bp.before_request
def require_key() -> None:
    """remove.bg answers a missing or wrong key with 403 (clients map statuses, some never expect 401)."""
    problem = key_problem()
    if problem == "missing":
        raise RemoveBgError("auth_failed", "this server has an API key; send it as X-Api-Key", 403, "Missing API Key")
    if problem == "wrong":
        raise RemoveBgError("auth_failed", "the API key is not this server's", 403, "Invalid API Key")


def _fields() -> Fields:
    """The request's fields, checked against remove.bg's names and kinds (file parts only in multipart)."""
    fields = read_fields()
    for name in fields.names():
        if name not in FIELDS:
            raise RemoveBgError("unknown_parameter", f"unknown parameter '{name[:40]}'; POST /v1.0/removebg "
                                                     f"accepts: {', '.join(FIELDS)}")
        if name in FILE_FIELDS and name in fields.text:
            raise RemoveBgError("invalid_request", f"'{name}' must be a file part of a multipart/form-data body; "
                                                   "in JSON or urlencoded bodies send image_url or image_file_b64")
        if name not in FILE_FIELDS and name in fields.files:
            raise RemoveBgError("invalid_request", f"'{name}' is a text field, not a file")
    return fields


def _choice(fields: Fields, name: str, default: str, allowed: tuple[str, ...] | dict[str, Any]) -> str:
    value = (fields.get(name) or default).strip().lower()
    if value not in allowed:
        raise RemoveBgError(f"invalid_{name}", f"{name} {value[:20]!r} is not one of: {', '.join(allowed)}")
    return value


def _flag(fields: Fields, name: str, default: bool) -> bool:
    text = fields.get(name)
    if text is None:
        return default
    with coded(f"invalid_{name}"):
        return pipeline.parse_bool(name, text)


def _unsupported(fields: Fields) -> None:
    """type, type_level and add_shadow are accepted only with the values that ask for nothing more."""
    kind = _choice(fields, "type", "auto", ("auto", "person", "product", "car"))
    if kind != "auto":
        raise RemoveBgError("unsupported_type", f"type={kind} is not supported: this server segments every kind "
                                                "of foreground with one model; send type=auto or leave it out")
    level = _choice(fields, "type_level", "1", ("none", "1", "2", "latest"))
    if level not in ("none", "1"):
        raise RemoveBgError("unsupported_type_level", f"type_level={level} is not supported: there is no "
                                                      "classifier (X-Type is always 'other'); send none or 1")
    if _flag(fields, "add_shadow", False):
        raise RemoveBgError("unsupported_add_shadow", "add_shadow=true is not supported: this server adds no "
                                                      "shadows; send add_shadow=false or leave it out")


def _options(fields: Fields) -> pipeline.Options:
    crop = _flag(fields, "crop", False)
    with coded("invalid_crop_margin"):
        margin = pipeline.parse_margin(fields.get("crop_margin"))  # clients send crop_margin=0px with crop=false
    with coded("invalid_roi"):
        roi = pipeline.parse_roi(fields.get("roi"))
    with coded("invalid_scale"):
        scale = pipeline.parse_scale(fields.get("scale"))
    with coded("invalid_position"):
        position = pipeline.parse_position(fields.get("position"))
    with coded("invalid_bg_color"):
        color = pipeline.parse_color(fields.get("bg_color"))
    return pipeline.Options(
        fmt=FORMATS[_choice(fields, "format", "auto", FORMATS)],
        only_mask=_choice(fields, "channels", "rgba", CHANNELS) == "alpha",
        crop=crop,
        crop_margin=margin if crop else pipeline.NO_MARGIN,
        color=color,
        max_megapixels=SIZES[_choice(fields, "size", "preview", SIZES)],
        roi=roi,
        semitransparency=_flag(fields, "semitransparency", True),
        scale=scale,
        position=position,
        refine=_flag(fields, "refine", True),
        decontaminate=_flag(fields, "decontaminate", True),
    )


def _given(fields: Fields, name: str) -> bool:
    return name in fields.files or fields.get(name) is not None


def _background(fields: Fields) -> IO[bytes] | None:
    """bg_image_file or bg_image_url (fetched with image_url's guards), at most one bg_* field in all."""
    given = [name for name in ("bg_color", "bg_image_url", "bg_image_file") if _given(fields, name)]
    if len(given) > 1:
        raise RemoveBgError("multiple_backgrounds", f"send one of bg_color, bg_image_url, bg_image_file, "
                                                    f"not {' and '.join(given)}")
    if "bg_image_file" in given:
        return file_stream(fields.files["bg_image_file"], "bg_image_file")[0]
    if "bg_image_url" in given:
        try:
            return image_source.fetch(fields.text["bg_image_url"].strip(), _config())
        except ApiError as exc:
            if exc.status in (400, 504):
                raise RemoveBgError("failed_image_download",
                                    exc.message.replace("image_url", "bg_image_url", 1)) from None
            raise
    return None


def _source(fields: Fields) -> tuple[IO[bytes], str]:
    given = [name for name in SOURCES if _given(fields, name)]
    if not given:
        raise RemoveBgError("missing_source", "send the image as one of image_file (a multipart file part), "
                                              "image_url or image_file_b64")
    if len(given) > 1:
        raise RemoveBgError("multiple_sources", f"send exactly one of {', '.join(SOURCES)}, not "
                                                f"{' and '.join(given)}")
    try:
        return image_source_of(fields, SOURCES)
    except ApiError as exc:
        if given[0] == "image_url" and exc.status in (400, 504):
            raise RemoveBgError("failed_image_download", exc.message) from None
        if given[0] != "image_url" and type(exc) is BadRequest:
            raise RemoveBgError("invalid_file", exc.message) from None
        raise


def _headers(response: Response, result: pipeline.Result, type_level: str) -> None:
    left, top, width, height = result.foreground or (0, 0, 0, 0)
    response.headers.update({
        "X-Width": str(result.size[0]), "X-Height": str(result.size[1]),
        "X-Foreground-Top": str(top), "X-Foreground-Left": str(left),
        "X-Foreground-Width": str(width), "X-Foreground-Height": str(height),
        "X-Credits-Charged": "0",  # an integer string: one widely used client parses it with int()
        "Cache-Control": "no-store",
    })
    if type_level != "none":
        response.headers["X-Type"] = DETECTED_TYPE


def wants_json(mimetype: str) -> bool:
    """`Accept: application/json` (with or without other types beside it) asks for the JSON form."""
    return request.accept_mimetypes.best_match([mimetype, "application/json"]) == "application/json"


@bp.post("/removebg")
def removebg() -> Response:
    """remove.bg's removebg: one image in, the cutout (or mask, composite or zip) out."""
    fields = _fields()
    _unsupported(fields)
    options = _options(fields)
    service, config = current_app.extensions["isnet_tiny"], _config()
    with ExitStack() as streams:
        background = _background(fields)
        if background is not None:
            streams.enter_context(closing(background))
        stream, stem = _source(fields)
        streams.enter_context(closing(stream))
        if background is None and options.color is None:
            result = pipeline.remove_background(stream, stem, options, service, config)
        else:
            result = pipeline.change_background(stream, stem, options, service, config, background)
    if result.foreground is None:
        raise RemoveBgError("unknown_foreground", "no foreground was found in the image (the mask is empty)")
    if wants_json(result.mimetype):
        left, top, width, height = result.foreground
        response = jsonify({"data": {"result_b64": base64.b64encode(result.payload).decode("ascii"),
                                     "foreground_top": top, "foreground_left": left,
                                     "foreground_width": width, "foreground_height": height}})
    else:
        response = Response(result.payload, mimetype=result.mimetype)
        response.headers["Content-Disposition"] = f'inline; filename="{result.filename}"'
    _headers(response, result, (fields.get("type_level") or "1").strip().lower())
    return response


@bp.get("/account")
def account() -> Response:
    """remove.bg's account: this server meters nothing and charges 0 credits a call, so every balance is 0."""
    return jsonify({"data": {"attributes": {
        "credits": {"total": 0.0, "subscription": 0.0, "payg": 0.0, "enterprise": 0.0},
        "api": {"free_calls": 0, "sizes": "all"},
    }}})
