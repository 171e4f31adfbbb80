"""The OpenAPI 3 description of the HTTP API, written by hand and kept true by tests/test_openapi.py."""
from __future__ import annotations

from typing import Any

from flask import Request

from app.config import ALLOWED_EXTENSIONS, Config

ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR}}}
    if retry:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def _image_errors(auth: bool) -> dict[str, Any]:
    errors = {
        "400": _error("bad form: no image or more than one of file / image_url / image_file_b64, an unknown "
                      "field, a bad option or colour; or image_url refused (not http/https, a private address)"),
        "413": _error("image over the size limit, or too many pixels"),
        "415": _error("not an image we accept"),
        "422": _error("truncated or corrupt image"),
        "503": _error("model loading, building or failed; or the server is busy", retry=True),
        "504": _error("image_url did not answer in time"),
    }
    if auth:
        errors["401"] = _error("missing or wrong API key")
    return errors


def _image_response(prefix: str, default: str) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "description": f"the result as an attachment, `{prefix}_<stem>.<ext>` (default {default})",
        "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
        "content": {"image/png": binary, "image/webp": binary, "image/jpeg": binary, "application/zip": binary},
    }


BOOLEAN_NOTE = "; the form also accepts 1/0, yes/no, on/off"
_LENGTH = r"[0-9]+(\.[0-9]+)?(px|%)?"
MARGIN_PATTERN = rf"^\s*{_LENGTH}(\s+{_LENGTH}){{0,3}}\s*$"
ROI_PATTERN = rf"^\s*{_LENGTH}(\s+{_LENGTH}){{3}}\s*$"
SCALE_PATTERN = r"^\s*(original|[0-9]+(\.[0-9]+)?%)\s*$"
POSITION_PATTERN = r"^\s*(original|center|[0-9]+(\.[0-9]+)?%(\s+[0-9]+(\.[0-9]+)?%)?)\s*$"
BINARY = {"type": "string", "format": "binary"}
BODIES_NOTE = ("The fields come as multipart/form-data, urlencoded or a JSON object (files only in multipart); "
               "the text fields may also be given in the query string, each field once.")
IMAGE_SOURCES = ("file", "image_url", "image_file_b64")


def _form(config: Config, fields: tuple[str, ...]) -> dict[str, Any]:
    """A multipart body with exactly these fields (the server rejects any other) and one image source."""
    catalogue: dict[str, Any] = {
        "file": {"type": "string", "format": "binary",
                 "description": f"the image, uploaded: {', '.join(ALLOWED_EXTENSIONS)}"},
        "image_url": {"type": "string", "format": "uri",
                      "description": "an http(s) URL the server fetches the image from (public addresses only, "
                                     "at most 3 redirects, the same size limit as an upload)"},
        "image_file_b64": {"type": "string",
                           "description": "the image as base64, plain or as a data: URL (data:image/png;base64,...)"},
        "format": {"type": "string", "enum": ["png", "webp", "jpeg", "jpg", "auto", "zip"],
                   "description": "output format (jpg is jpeg); auto is PNG when the result has transparency, "
                                  "else JPEG; zip holds color.jpg (the colours, opaque) and alpha.png (the mask)"},
        "only_mask": {"type": "boolean", "default": False,
                      "description": f"return the 8-bit mask alone{BOOLEAN_NOTE}"},
        "crop": {"type": "boolean", "default": False, "description": f"crop to the subject{BOOLEAN_NOTE}"},
        "crop_margin": {"type": "string", "pattern": MARGIN_PATTERN,
                        "description": "with crop: margin around the subject, '20', '20px' or '10%' (of the "
                                       "subject), 1, 2 or 4 values as in CSS (at most 1000 px or 100 % each)"},
        "max_dimension": {"type": "integer", "minimum": 1, "maximum": config.max_dimension,
                          "description": "long side of the result in pixels, at most the server's MAX_DIMENSION"},
        "max_megapixels": {"type": "number", "minimum": 0.0001, "maximum": 1000,
                           "description": "at most this many million pixels in the result (beside max_dimension)"},
        "roi": {"type": "string", "pattern": ROI_PATTERN,
                "description": "region of interest 'x1 y1 x2 y2' in px of the original image or %: only the "
                               "subject inside it is kept"},
        "scale": {"type": "string", "pattern": SCALE_PATTERN,
                  "description": "'original', or 10%-100%: the subject's size relative to the canvas "
                                 "(implies position=center)"},
        "position": {"type": "string", "pattern": POSITION_PATTERN,
                     "description": "'original', 'center', or one or two percentages (horizontal vertical) "
                                    "placing the subject on the canvas"},
        "semitransparency": {"type": "boolean", "default": True,
                             "description": f"false makes every pixel fully opaque or fully transparent{BOOLEAN_NOTE}"},
        "refine": {"type": "boolean", "default": True,
                   "description": "refine the model's mask into an alpha matte along the subject's edge, guided "
                                  "by the photo at the output's size (a pixel changes side of 0.5 only where the "
                                  f"model is unsure); false keeps the model's mask{BOOLEAN_NOTE}"},
        "decontaminate": {"type": "boolean", "default": True,
                          "description": "replace the old background's colour in semi-transparent pixels with an "
                                         f"estimated foreground colour; false keeps the photo's{BOOLEAN_NOTE}"},
        "color": {"type": "string",
                  "description": "'#RGB', '#RGBA', '#RRGGBB', '#RRGGBBAA', 'R,G,B' or a CSS name; default white"},
        "bg_color": {"type": "string",
                     "description": "another name for color (remove.bg's); send one of the two"},
        "bg_image": {"type": "string", "format": "binary",
                     "description": "a background image, scaled to cover; not with color"},
    }
    # No `example` values: Swagger UI would pre-fill and send them (image_url beside file, crop_margin
    # without crop, color with bg_color), and the strict form refuses those combinations.
    # "Exactly one source" is said in words, not with oneOf: openapi-python-client 0.29 turns a body with
    # oneOf into `Any`, and Swagger UI cannot render a form for it. The server enforces it (400).
    schema: dict[str, Any] = {
        "type": "object",
        "properties": {name: catalogue[name] for name in fields},
        "additionalProperties": False,
        "description": f"Send the image as exactly one of {', '.join(IMAGE_SOURCES)}; any field not listed "
                       "here is refused with 400.",
    }
    return {"required": True, "content": _bodies(schema, FILE_FIELDS)}


def _bodies(multipart: dict[str, Any], files: frozenset[str]) -> dict[str, Any]:
    """The same fields as multipart, urlencoded and JSON; files only in multipart."""
    text = {**multipart, "properties": {name: prop for name, prop in multipart["properties"].items()
                                        if name not in files}}
    return {"multipart/form-data": {"schema": multipart}, "application/x-www-form-urlencoded": {"schema": text},
            "application/json": {"schema": text}}


FILE_FIELDS = frozenset({"file", "bg_image", "image_file", "bg_image_file"})
OPTION_FIELDS = ("format", "crop", "crop_margin", "max_dimension", "max_megapixels", "roi", "scale", "position",
                 "semitransparency", "refine", "decontaminate")
REMOVE_FIELDS = ("file", "image_url", "image_file_b64", "only_mask", *OPTION_FIELDS)
CHANGE_COLOR_FIELDS = ("file", "image_url", "image_file_b64", "color", "bg_color", "bg_image", *OPTION_FIELDS)


REMOVEBG_ERRORS = {"$ref": "#/components/schemas/RemoveBgErrors"}
FOREGROUND = ("foreground_top", "foreground_left", "foreground_width", "foreground_height")


def _removebg_error(description: str, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description,
                                "content": {"application/json": {"schema": REMOVEBG_ERRORS}}}
    if retry:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def _removebg_body() -> dict[str, Any]:
    """remove.bg's fields, as its clients send them (booleans also as strings: "true" / "false")."""
    boolean = {"oneOf": [{"type": "boolean"}, {"type": "string", "enum": ["true", "false"]}]}
    properties: dict[str, Any] = {
        "image_file": {**BINARY, "description": "the image (multipart only); a part filename without an "
                                                "extension is judged by its content"},
        "image_url": {"type": "string", "format": "uri",
                      "description": "an http(s) URL fetched with the same guards as /api/bg's image_url"},
        "image_file_b64": {"type": "string", "description": "the image as base64"},
        "size": {"type": "string", "enum": ["preview", "small", "regular", "medium", "hd", "full", "4k", "auto"],
                 "default": "preview", "description": "preview/small/regular: at most 0.25 MP; medium 1.5 MP; "
                                                      "hd 4 MP; full/4k/auto: the original, up to MAX_DIMENSION"},
        "type": {"type": "string", "enum": ["auto", "person", "product", "car"], "default": "auto",
                 "description": "only auto is served; the others are 400 unsupported_type"},
        "type_level": {"type": "string", "enum": ["none", "1", "2", "latest"], "default": "1",
                       "description": "none (no X-Type) or 1 (X-Type: other); 2 and latest are 400 "
                                      "unsupported_type_level"},
        "format": {"type": "string", "enum": ["auto", "png", "jpg", "jpeg", "zip", "webp"], "default": "auto",
                   "description": "auto: PNG where the result has transparency, else JPEG; zip: color.jpg + "
                                  "alpha.png; webp is this server's extension"},
        "roi": {"type": "string", "pattern": ROI_PATTERN, "default": "0% 0% 100% 100%",
                "description": "x1 y1 x2 y2 in px (of the original image) or %; only the subject inside is kept"},
        "crop": {**boolean, "description": "crop off the empty regions"},
        "crop_margin": {"type": "string", "pattern": MARGIN_PATTERN,
                        "description": "with crop=true: 1, 2 or 4 values in px or % (of the subject); ignored "
                                       "without crop"},
        "scale": {"type": "string", "pattern": SCALE_PATTERN, "default": "original"},
        "position": {"type": "string", "pattern": POSITION_PATTERN, "default": "original"},
        "channels": {"type": "string", "enum": ["rgba", "alpha"], "default": "rgba",
                     "description": "alpha: the mask alone"},
        "add_shadow": {**boolean, "description": "only false is served; true is 400 unsupported_add_shadow"},
        "semitransparency": {**boolean, "description": "false: every pixel fully opaque or transparent"},
        "refine": {**boolean, "default": True,
                   "description": "this server's extension, as on /api/bg: false keeps the model's mask as it is"},
        "decontaminate": {**boolean, "default": True,
                          "description": "this server's extension, as on /api/bg: false keeps the photo's colours "
                                         "in semi-transparent pixels"},
        "bg_color": {"type": "string", "description": "hex (81d4fa, fff, with alpha 4 or 8 digits) or a colour name"},
        "bg_image_url": {"type": "string", "format": "uri", "description": "a background image, scaled to cover"},
        "bg_image_file": {**BINARY, "description": "a background image (multipart only), scaled to cover"},
    }
    multipart = {"type": "object", "properties": properties, "additionalProperties": False,
                 "description": "Exactly one of image_file, image_url, image_file_b64; at most one bg_* field."}
    return {"required": True, "content": _bodies(multipart, FILE_FIELDS)}


def _removebg_paths(config: Config, auth: bool) -> dict[str, Any]:
    """remove.bg's API as this server answers it (see app/api/removebg_api.py)."""
    security = [{"apiKey": []}, {"bearer": []}] if auth else []
    denied = {"403": _removebg_error("missing or wrong API key (X-Api-Key)")} if auth else {}
    binary = {"schema": BINARY}
    number = {"schema": {"type": "string", "pattern": "^[0-9]+$"}}
    headers = {name: {**number, "required": True}
               for name in ("X-Width", "X-Height", "X-Credits-Charged", "X-Foreground-Top", "X-Foreground-Left",
                            "X-Foreground-Width", "X-Foreground-Height")}
    headers["X-Type"] = {"schema": {"type": "string"}, "description": "always 'other' (no classifier); absent "
                                                                      "with type_level=none"}
    result = {"type": "object", "required": ["data"], "properties": {"data": {
        "type": "object", "required": ["result_b64", *FOREGROUND],
        "properties": {"result_b64": {"type": "string", "format": "byte"},
                       **{name: {"type": "integer"} for name in FOREGROUND}}}}}
    credits = {"type": "object", "required": ["total", "subscription", "payg", "enterprise"],
               "properties": {name: {"type": "number"} for name in ("total", "subscription", "payg", "enterprise")}}
    account = {"type": "object", "required": ["data"], "properties": {"data": {
        "type": "object", "required": ["attributes"], "properties": {"attributes": {
            "type": "object", "required": ["credits", "api"], "properties": {
                "credits": credits,
                "api": {"type": "object", "required": ["free_calls", "sizes"],
                        "properties": {"free_calls": {"type": "integer"}, "sizes": {"type": "string"}}}}}}}}}
    return {
        "/v1.0/removebg": {"post": {
            "summary": "remove.bg-compatible background removal",
            "description": "remove.bg's API: point a remove.bg client at this server. The image bytes, or "
                           'with Accept: application/json `{"data": {"result_b64", "foreground_*"}}`. '
                           f"Uploads up to {config.max_file_size_mb} MB. Errors are remove.bg's "
                           '`{"errors": [{"title", "code", "detail"}]}`.',
            "operationId": "removebg", "tags": ["remove.bg"], "security": security,
            "requestBody": _removebg_body(),
            "responses": {
                "200": {"description": "the result", "headers": headers,
                        "content": {"image/png": binary, "image/jpeg": binary, "image/webp": binary,
                                    "application/zip": binary, "application/json": {"schema": result}}},
                "400": _removebg_error("invalid parameters or an unprocessable image; code says which "
                                       "(missing_source, invalid_size, file_too_large, resolution_too_high, "
                                       "unknown_foreground...)"),
                **denied,
                "429": _removebg_error("the server is busy", retry=True),
                "503": _removebg_error("the model is loading or unavailable", retry=True),
            },
        }},
        "/v1.0/account": {"get": {
            "summary": "remove.bg-compatible account (nothing is metered: every balance is 0)",
            "operationId": "removebgAccount", "tags": ["remove.bg"], "security": security,
            "responses": {"200": {"description": "the account",
                                  "content": {"application/json": {"schema": account}}}, **denied},
        }},
    }


def server_url(request: Request) -> str:
    """This server as the client reached it; X-Forwarded-Proto says https behind a TLS-terminating proxy."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    scheme = forwarded if forwarded in ("http", "https") else request.scheme
    return f"{scheme}://{request.host}{request.script_root}"


def _with_request_id(paths: dict[str, Any]) -> None:
    """Every operation takes an optional X-Request-ID and every response carries one."""
    for item in paths.values():
        for operation in item.values():
            operation.setdefault("parameters", []).append({"$ref": "#/components/parameters/RequestId"})
            for response in operation["responses"].values():
                response.setdefault("headers", {})["X-Request-ID"] = {"$ref": "#/components/headers/RequestId"}


def openapi_document(config: Config, metrics: bool, server: str | None = None) -> dict[str, Any]:
    """The document for this server's configuration (limits, whether a key or /metrics exist).

    `server` is the base URL clients reached (see server_url); without it the document has no `servers`.
    """
    auth = config.api_key is not None
    security = [{"bearer": []}, {"apiKey": []}] if auth else []
    paths: dict[str, Any] = {
        "/api/bg/remove": {"post": {
            "summary": "Remove the background",
            "description": f"Transparent cutout. Uploads up to {config.max_file_size_mb} MB; results at most "
                           f"{config.max_dimension} px on the long side. {BODIES_NOTE}",
            "operationId": "remove", "security": security,
            "requestBody": _form(config, REMOVE_FIELDS),
            "responses": {"200": _image_response("nobg", "PNG"), **_image_errors(auth)},
        }},
        "/api/bg/change_color": {"post": {
            "summary": "Replace the background with a colour or an image",
            "description": BODIES_NOTE,
            "operationId": "changeColor", "security": security,
            "requestBody": _form(config, CHANGE_COLOR_FIELDS),
            "responses": {"200": _image_response("colored", "JPEG, or PNG for a translucent colour"),
                          **_image_errors(auth)},
        }},
        "/api/bg/health": {"get": {
            "summary": "Health check for the platform", "operationId": "health",
            "responses": {
                "200": {"description": "healthy", "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Health"}}}},
                "503": {"description": "the model failed, or (PRELOAD_MODEL) is not loaded yet", "content": {"application/json": {"schema": {
                    "$ref": "#/components/schemas/Health"}}}},
            },
        }},
        "/api/bg/status": {"get": {
            "summary": "Model, state, memory, limits and counters", "operationId": "status",
            "responses": {"200": {"description": "status", "content": {"application/json": {"schema": {
                "$ref": "#/components/schemas/Status"}}}}},
        }},
        "/api/bg/clear_cache": {"post": {
            "summary": "Unload the model and return its memory to the OS", "operationId": "clearCache",
            "security": security,
            "responses": {
                "200": {"description": "cleared", "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status", "freed_mb", "memory"],
                    "properties": {"status": {"type": "string"}, "freed_mb": {"type": "number"},
                                   "memory": {"type": "object"}}}}}},
                **({"401": _error("missing or wrong API key")} if auth else {}),
            },
        }},
        "/api/bg/openapi.json": {"get": {
            "summary": "This document", "operationId": "openapi",
            "responses": {"200": {"description": "OpenAPI 3 document",
                                  "content": {"application/json": {"schema": {"type": "object"}}}}},
        }},
    }
    paths.update(_removebg_paths(config, auth))
    if metrics:
        paths["/metrics"] = {"get": {
            "summary": "Prometheus metrics", "operationId": "metrics", "security": security,
            "responses": {"200": {"description": "text exposition format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **({"401": _error("missing or wrong API key")} if auth else {})},
        }}
    _with_request_id(paths)
    document: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {"title": "PixPort ISNet Tiny", "version": "1.0.0",
                 "description": "Background removal over HTTP. Errors are JSON "
                                "{\"error\": \"...\", \"request_id\": \"...\"} (under /v1.0 remove.bg's "
                                "{\"errors\": [{\"title\", \"code\", \"detail\"}]}); every response has an "
                                "X-Request-ID header (yours echoed when it is 1-128 of A-Z a-z 0-9 . _ : -, "
                                "else a new one) that also appears in the server's access log."},
        "paths": paths,
        "components": {
            "parameters": {"RequestId": {
                "name": "X-Request-ID", "in": "header", "required": False,
                "description": "your ID for this request, echoed back and logged; otherwise the server makes one",
                "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:-]{1,128}$"}}},
            "headers": {"RequestId": {
                "description": "the request's ID: yours when it was sane, else generated",
                "required": True, "schema": {"type": "string"}}},
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": {
                "RemoveBgErrors": {"type": "object", "required": ["errors"], "properties": {"errors": {
                    "type": "array", "minItems": 1, "items": {
                        "type": "object", "required": ["title", "code", "detail"],
                        "properties": {"title": {"type": "string"}, "code": {"type": "string"},
                                       "detail": {"type": "string"}}}}}},
                "Error": {"type": "object", "required": ["error", "request_id"],
                          "properties": {"error": {"type": "string"}, "request_id": {"type": "string"}},
                          "additionalProperties": False},
                "Health": {"type": "object", "required": ["status", "memory_mb", "model_loaded"], "properties": {
                    "status": {"type": "string", "enum": ["healthy", "starting", "unhealthy"]},
                    "memory_mb": {"type": "number"}, "model_loaded": {"type": "boolean"},
                    "model": {"type": "string"}, "model_state": {"type": "string"},
                    "warning": {"type": "string"}, "error": {"type": "string", "nullable": True}}},
                "Status": {"type": "object",
                           "required": ["status", "model", "model_info", "memory", "max_file_size_mb",
                                        "max_dimension", "allowed_extensions"],
                           "properties": {
                               "status": {"type": "string"}, "model": {"type": "string"},
                               "model_info": {"type": "object", "properties": {
                                   "name": {"type": "string"},
                                   "state": {"type": "string", "enum": ["not_loaded", "downloading", "preparing",
                                                                        "loading", "ready", "failed"]},
                                   "source": {"type": "string", "nullable": True},
                                   "reason": {"type": "string", "nullable": True}}},
                               "memory": {"type": "object", "properties": {
                                   "rss_mb": {"type": "number"}, "peak_rss_mb": {"type": "number", "nullable": True},
                                   "model_loaded": {"type": "boolean"}}},
                               "max_file_size_mb": {"type": "integer"}, "max_dimension": {"type": "integer"},
                               "max_pixels": {"type": "integer"},
                               "allowed_extensions": {"type": "array", "items": {"type": "string"}},
                               "output_formats": {"type": "array", "items": {"type": "string"}},
                               "queue": {"type": "object"}, "inference": {"type": "object"}}},
            },
        },
    }
    if server is not None:
        document["servers"] = [{"url": server}]
    return document
