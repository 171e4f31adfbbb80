"""HTTP for background removal: parse and validate the form, run the pipeline, respond.

This blueprint never touches onnxruntime; all model work goes through IsnetTinyService.
"""
from __future__ import annotations

import difflib
import hmac
import io
from contextlib import closing
from pathlib import PurePath
from typing import IO, Any

from flask import Blueprint, Response, current_app, jsonify, request, send_file
from werkzeug.datastructures import FileStorage
from werkzeug.utils import secure_filename

from app import image_source, imaging, pipeline
from app.api.fields import Fields, read_fields
from app.api.openapi import openapi_document, server_url
from app.config import ALLOWED_EXTENSIONS, Config
from app.errors import ApiError, BadRequest, TooLarge
from app.services.isnet_tiny_service import HIGH_MEMORY_MB, IsnetTinyService, ModelState, peak_rss_mb, rss_mb

bp = Blueprint("bg", __name__, url_prefix="/api/bg")

OPEN_ENDPOINTS = {"bg.health", "bg.status", "bg.openapi"}


def _config() -> Config:
    return current_app.config["PIXPORT"]


def _service() -> IsnetTinyService:
    return current_app.extensions["isnet_tiny"]


def _presented_key() -> str | None:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("X-API-Key")


def key_problem() -> str | None:
    """None when the request may pass (no API_KEY set, or the right key), else "missing" or "wrong".

    The key is compared in constant time.
    """
    expected = _config().api_key
    if expected is None:
        return None
    presented = _presented_key()
    if presented is None:
        return "missing"
    return None if hmac.compare_digest(presented.encode(), expected.encode()) else "wrong"


def check_api_key() -> None:
    """With API_KEY set, everything but the platform's probes needs the key."""
    if key_problem() is not None:
        raise ApiError("missing or wrong API key; send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'", 401)


@bp.before_request
def require_api_key() -> None:
    if request.endpoint not in OPEN_ENDPOINTS:
        check_api_key()


def safe_stem(filename: str) -> str:
    """A download name that cannot carry paths, quotes or header breaks."""
    stem = secure_filename(PurePath(filename.replace("\\", "/")).stem)[:80]
    return stem or "image"


SOURCE_FIELDS: tuple[str, ...] = ("file", "image_url", "image_file_b64")
FILE_FIELDS = frozenset({"file", "bg_image"})
OPTION_FIELDS: tuple[str, ...] = ("format", "crop", "crop_margin", "max_dimension", "max_megapixels", "roi",
                                  "scale", "position", "semitransparency", "refine", "decontaminate")
ACCEPTED_FIELDS: dict[str, tuple[str, ...]] = {
    "remove": (*SOURCE_FIELDS, *OPTION_FIELDS, "only_mask"),
    "change_color": (*SOURCE_FIELDS, *OPTION_FIELDS, "color", "bg_color", "bg_image"),
}
MISPLACED_HINTS: dict[tuple[str, str], str] = {
    ("change_color", "only_mask"): "change_color always returns a composed image; for the mask alone use "
                                   "/api/bg/remove with only_mask=true",
    ("remove", "color"): "a colour or a background image belongs to /api/bg/change_color",
    ("remove", "bg_color"): "a colour or a background image belongs to /api/bg/change_color",
    ("remove", "bg_image"): "a colour or a background image belongs to /api/bg/change_color",
}


def check_fields(endpoint: str) -> Fields:
    """The request's fields (query string, form or JSON), refusing (400) any field the endpoint does not take,
    a field sent twice, a file where text is expected or the other way round; the message names the field
    and lists the accepted ones."""
    accepted = ACCEPTED_FIELDS[endpoint]
    listing = f"POST /api/bg/{endpoint} accepts: {', '.join(accepted)}"
    try:
        fields = read_fields()
    except BadRequest as exc:
        raise BadRequest(f"{exc.message}; {listing}") from None
    for name in fields.names():
        if name not in accepted:
            hint = MISPLACED_HINTS.get((endpoint, name))
            if hint is None:
                close = difflib.get_close_matches(name, accepted, n=1, cutoff=0.7)
                hint = f"did you mean '{close[0]}'?" if close else None
            known = any(name in names for names in ACCEPTED_FIELDS.values())
            what = f"'{name[:40]}' is not accepted here" if known else f"unknown field '{name[:40]}'"
            raise BadRequest(f"{what}{f' ({hint})' if hint else ''}; {listing}")
        if name in FILE_FIELDS and name in fields.text:
            alternatives = "; or send image_url or image_file_b64 instead" if name == "file" else ""
            where = " (a JSON body or the query string cannot carry files)" if fields.json or name in request.args else ""
            raise BadRequest(f"'{name}' must be a file part, e.g. curl -F {name}=@photo.jpg{where}{alternatives}")
        if name not in FILE_FIELDS and name in fields.files:
            raise BadRequest(f"'{name}' is a text field, not a file; e.g. curl -F {name}=value")
    return fields


def file_stream(upload: FileStorage, field: str) -> tuple[IO[bytes], str]:
    """A multipart file part's stream (in memory or spooled to UPLOAD_FOLDER) and a safe stem; 400/413/415.

    A part with a filename but no extension (or no Content-Type) is judged by its content alone.
    """
    if not upload.filename:
        raise BadRequest(f"the '{field}' field has no filename; attach a file, e.g. curl -F {field}=@photo.jpg")
    imaging.check_extension(upload.filename)
    stream = upload.stream
    size = stream.seek(0, io.SEEK_END)
    if size == 0:
        raise BadRequest(f"the uploaded '{field}' file is empty")
    limit = _config().max_content_length
    if size > limit:
        raise TooLarge(f"the '{field}' file is larger than {limit // (1024 * 1024)} MB; send a smaller image")
    stream.seek(0)
    return stream, safe_stem(upload.filename)


def image_source_of(fields: Fields, names: tuple[str, str, str] = SOURCE_FIELDS) -> tuple[IO[bytes], str]:
    """Exactly one of the file, URL and base64 fields (`names`, in that order) -> a seekable stream and a
    safe download stem."""
    file_name, url_name, b64_name = names
    given = [name for name in names if name in fields.files or fields.get(name) is not None]
    if not given:
        blank = [name for name in names if name in fields.text]
        what = f"'{blank[0]}' is empty" if blank else "no image"
        raise BadRequest(
            f"{what}: send one of '{file_name}' (multipart upload, e.g. curl -F {file_name}=@photo.jpg), "
            f"'{url_name}' (an http(s) URL) or '{b64_name}' (base64 or a data: URL)"
        )
    if len(given) > 1:
        raise BadRequest(f"send exactly one of {', '.join(names)}, not {' and '.join(given)}")
    config = _config()
    if given[0] == url_name:
        url = fields.text[url_name].strip()
        return image_source.fetch(url, config), safe_stem(image_source.url_filename(url))
    if given[0] == b64_name:
        return image_source.decode_base64(fields.text[b64_name], config.max_content_length,
                                          config.upload_folder), "image"
    return file_stream(fields.files[file_name], file_name)


def _color_field(fields: Fields) -> str | None:
    """`color`, or remove.bg's name for it, `bg_color` (not both)."""
    color, bg_color = fields.get("color"), fields.get("bg_color")
    if color is not None and bg_color is not None:
        raise BadRequest("send color or bg_color (the same field under remove.bg's name), not both")
    return bg_color if color is None else color


def _flag(fields: Fields, name: str, default: bool) -> bool:
    """A boolean option; not sent (or blank, see Fields.get) means `default`."""
    text = fields.get(name)
    return default if text is None else pipeline.parse_bool(name, text)


def _options(fields: Fields) -> pipeline.Options:
    crop = pipeline.parse_bool("crop", fields.text.get("crop"))
    crop_margin = fields.get("crop_margin")
    if crop_margin is not None and not crop:
        raise BadRequest("crop_margin only applies with crop=true; add crop=true or leave crop_margin out")
    return pipeline.Options(
        fmt=pipeline.parse_format(fields.text.get("format")),
        only_mask=pipeline.parse_bool("only_mask", fields.text.get("only_mask")),
        crop=crop,
        crop_margin=pipeline.parse_margin(crop_margin),
        color=pipeline.parse_color(_color_field(fields)),
        max_dimension=pipeline.parse_max_dimension(fields.text.get("max_dimension"), _config().max_dimension),
        max_megapixels=pipeline.parse_megapixels(fields.text.get("max_megapixels")),
        roi=pipeline.parse_roi(fields.text.get("roi")),
        semitransparency=_flag(fields, "semitransparency", True),
        scale=pipeline.parse_scale(fields.text.get("scale")),
        position=pipeline.parse_position(fields.text.get("position")),
        refine=_flag(fields, "refine", True),
        decontaminate=_flag(fields, "decontaminate", True),
    )


def _file_response(result: pipeline.Result) -> Response:
    response = send_file(
        io.BytesIO(result.payload), mimetype=result.mimetype, as_attachment=True, download_name=result.filename
    )
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.post("/remove")
def remove() -> Response:
    """The subject on a transparent background (PNG by default)."""
    fields = check_fields("remove")
    options = _options(fields)
    stream, stem = image_source_of(fields)
    with closing(stream):
        return _file_response(pipeline.remove_background(stream, stem, options, _service(), _config()))


@bp.post("/change_color")
def change_color() -> Response:
    """The subject over a colour (default white, JPEG) or over an uploaded background image."""
    fields = check_fields("change_color")
    options = _options(fields)
    background = file_stream(fields.files["bg_image"], "bg_image") if "bg_image" in fields.files else None
    if background is not None and options.color is not None:  # before any image_url download
        raise BadRequest("send either color (or bg_color) or bg_image, not both")
    stream, stem = image_source_of(fields)
    with closing(stream):
        return _file_response(pipeline.change_background(
            stream, stem, options, _service(), _config(), background[0] if background else None
        ))


def _memory() -> dict[str, Any]:
    peak = peak_rss_mb()
    return {
        "rss_mb": round(rss_mb(), 1),
        "peak_rss_mb": round(peak, 1) if peak is not None else None,
        "model_loaded": _service().loaded,
    }


@bp.get("/health")
def health() -> Response:
    """For the platform's probe: cheap, never waits behind an inference or a load.

    With PRELOAD_MODEL on (the image) 200 means the model is loaded and can serve: 503 while it loads,
    503 with the reason when it failed (each probe also lets a failed load retry after its back-off).
    Without it the model loads on the first request, so health is 200 until a load has failed.
    """
    service = _service()
    if service.eager:
        service.start_loading()  # no-op while loading or ready; reloads after clear_cache, retries a failure
    state = service.state
    memory = rss_mb()
    body: dict[str, Any] = {
        "status": "healthy",
        "memory_mb": round(memory, 1),
        "model_loaded": service.loaded,
        "model": service.model_name,
        "model_state": state.value,
    }
    if memory > HIGH_MEMORY_MB:
        body["warning"] = f"memory {memory:.0f} MB is above {HIGH_MEMORY_MB:.0f} MB; POST /api/bg/clear_cache frees it"
    status, retry_after = 200, None
    if state == ModelState.FAILED:
        body["status"] = "unhealthy"
        body["error"] = service.describe()["reason"]
        status, retry_after = 503, 30
    elif service.eager and state != ModelState.READY:
        body["status"] = "starting"
        status, retry_after = 503, 5
    response = jsonify(body)
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


@bp.get("/status")
def status() -> Response:
    """Everything a person or a dashboard wants: model, source, state, memory, limits, counters."""
    service = _service()
    config = _config()
    model = service.describe()
    return jsonify(
        {
            "status": "error" if service.state == ModelState.FAILED else "ok",
            "model": model["name"],
            "model_info": model,
            "memory": _memory(),
            "max_file_size_mb": config.max_file_size_mb,
            "max_dimension": config.max_dimension,
            "max_pixels": config.max_pixels,
            "allowed_extensions": list(ALLOWED_EXTENSIONS),
            "output_formats": ["png", "webp", "jpeg", "auto", "zip"],
            "queue": {"waiting": service.queue_length, "max_queue": config.max_queue,
                      "timeout_s": config.queue_timeout_s, "rejected_busy": service.stats.rejected_busy},
            "inference": {"count": service.stats.inferences, "last_seconds": service.stats.last_inference_s,
                          "threads": config.ort_threads, "arena": config.ort_arena,
                          "slots": config.inference_slots},
        }
    )


@bp.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI 3 description of this server's API."""
    return jsonify(openapi_document(_config(), metrics="metrics" in current_app.view_functions,
                                    server=server_url(request)))


@bp.post("/clear_cache")
def clear_cache() -> Response:
    """Drop the model session and return the memory to the OS; the next request reloads it."""
    freed = _service().clear()
    return jsonify({"status": "cleared", "freed_mb": round(freed, 1), "memory": _memory()})
