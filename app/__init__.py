"""Application factory: configuration, blueprint, page, JSON errors, request IDs, CORS, security headers, CLI."""
from __future__ import annotations

import logging
import re
import tempfile
import time
import uuid
from typing import IO, Any, Callable, Mapping

from flask import Flask, Request, current_app, g, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.config import ALLOWED_EXTENSIONS, UPLOAD_IN_MEMORY_BYTES, Config
from app.errors import ApiError

log = logging.getLogger("app")

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)
REQUEST_ID_HEADER = "X-Request-ID"
# An incoming ID is echoed only when it is short and plain, so it cannot forge log lines or bloat them.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
CORS_ALLOW_HEADERS = ["Authorization", "X-API-Key", "Content-Type", REQUEST_ID_HEADER]
CORS_EXPOSE_HEADERS = ["Content-Disposition", REQUEST_ID_HEADER, "Retry-After", "X-Width", "X-Height", "X-Type",
                       "X-Credits-Charged", "X-Foreground-Top", "X-Foreground-Left", "X-Foreground-Width",
                       "X-Foreground-Height"]


class SpoolingRequest(Request):
    """Large uploads spool to anonymous temp files in UPLOAD_FOLDER: no name on disk, gone on close."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        if total_content_length is not None and total_content_length <= UPLOAD_IN_MEMORY_BYTES:
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        folder = current_app.config["PIXPORT"].upload_folder
        return tempfile.TemporaryFile("wb+", dir=folder)  # type: ignore[return-value]


def request_id() -> str:
    """This request's ID: the client's X-Request-ID when it is sane, else a new one (set once per request)."""
    if "request_id" not in g:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if SANE_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    return g.request_id


def _error_response(message: str, status: int, retry_after: int | None = None) -> Any:
    response = jsonify({"error": message, "request_id": request_id()})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _limit_hit(exc: RequestEntityTooLarge) -> str:
    """Which of Werkzeug's limits raised this 413: 'parts', 'field' or 'body'.

    Werkzeug raises the same bare exception for all three, so the raising frame tells them apart: the
    multipart decoder counts parts (next_event) and buffers a field (receive_data); the form parser adds
    a field's chunks up (parse); everything else is the stream's length limit.
    """
    frame = exc.__traceback__
    innermost = None
    while frame is not None:
        innermost = frame.tb_frame.f_code
        frame = frame.tb_next
    if innermost is None or "werkzeug" not in innermost.co_filename.replace("\\", "/"):
        return "body"
    if innermost.co_name == "next_event":
        return "parts"
    if innermost.co_name in ("receive_data", "parse"):
        return "field"
    return "body"


def _too_large_message(exc: RequestEntityTooLarge) -> str:
    """A 413 that names the limit hit (upload size, a text field's size, or the number of form parts)."""
    flask_config = current_app.config
    limit = _limit_hit(exc)
    if limit == "parts":
        return (f"the form has more than {flask_config['MAX_FORM_PARTS']} parts (fields and files); "
                "send the image and only the options you need")
    if limit == "field":
        return (f"a text form field is larger than {flask_config['MAX_FORM_MEMORY_SIZE'] // 1000} KB, the limit for "
                "text fields (image_file_b64 of an image of MAX_FILE_SIZE_MB); send a smaller image, or send it "
                "as a file part (curl -F file=@photo.jpg)")
    size_mb = flask_config["PIXPORT"].max_file_size_mb
    return f"the upload is larger than {size_mb} MB (MAX_FILE_SIZE_MB); send a smaller image"


def _register_errors(app: Flask) -> None:
    """One place that turns every failure into `{"error": ...}` JSON, never a traceback; under /v1.0 the same
    answer in remove.bg's `{"errors": [...]}` shape, for routing errors (404, 405) too."""
    from app.api import removebg_api

    def api_error(exc: ApiError) -> Any:
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s [request %s]", request.method, request.path, exc.status, exc.message,
                        request_id())
        return _error_response(exc.message, exc.status, exc.retry_after)

    def too_large(exc: RequestEntityTooLarge) -> Any:
        return _error_response(_too_large_message(exc), 413)

    def http_error(exc: HTTPException) -> Any:
        response = _error_response(exc.description or exc.name, exc.code or 500)
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value  # e.g. Allow on 405
        return response

    def unexpected(exc: Exception) -> Any:
        log.exception("unhandled error on %s %s [request %s]", request.method, request.path, request_id())
        return _error_response("internal error; the request was not processed", 500)

    def shaped(handler: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def respond(exc: Exception) -> Any:
            response = handler(exc)
            return removebg_api.reshape(exc, response) if removebg_api.owns(request.path) else response

        return respond

    for kind, handler in ((ApiError, api_error), (RequestEntityTooLarge, too_large), (HTTPException, http_error),
                          (Exception, unexpected)):
        app.register_error_handler(kind, shaped(handler))


def _register_request_hooks(app: Flask, config: Config) -> None:
    """Request IDs and timing first; preflights answered before the API key check; CORS when configured."""

    @app.before_request
    def begin() -> None:
        g.started = time.perf_counter()
        request_id()

    @app.before_request
    def preflight() -> Any:
        # A browser's preflight never carries credentials, so it must not meet the API key check.
        if request.method == "OPTIONS" and request.routing_exception is None:
            return app.make_default_options_response()
        return None

    @app.after_request
    def tag(response: Any) -> Any:
        response.headers[REQUEST_ID_HEADER] = request_id()
        return response

    if config.cors_origins:
        from flask_cors import CORS

        wildcard = config.cors_origins == ("*",)
        # flask-cors reads a string with regex characters as a pattern; an IPv6 origin's brackets are literal.
        origins = [re.compile(re.escape(o) + r"\Z", re.IGNORECASE) if "[" in o else o for o in config.cors_origins]
        CORS(app, origins="*" if wildcard else origins, send_wildcard=wildcard,
             always_send=False, methods=["GET", "POST", "OPTIONS"], allow_headers=CORS_ALLOW_HEADERS,
             expose_headers=CORS_EXPOSE_HEADERS, max_age=600)


def create_app(config: Config | Mapping[str, str] | None = None) -> Flask:
    """Build the app. `config` is a Config, an environment-like mapping (tests), or None for os.environ."""
    from app.api.bg_removal_api import bp
    from app.api.docs import docs_bp
    from app.api.removebg_api import bp as removebg_bp
    from app.cli import register_cli
    from app.heap import tune_malloc
    from app.services.isnet_tiny_service import IsnetTinyService

    if not isinstance(config, Config):
        config = Config.from_env(config)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    tune_malloc()
    app = Flask(__name__)
    app.request_class = SpoolingRequest
    app.config.update(
        PIXPORT=config,
        MAX_CONTENT_LENGTH=config.max_request_bytes,  # each image is checked against max_content_length
        MAX_FORM_MEMORY_SIZE=config.max_form_field_bytes,  # image_file_b64 is a text field
        TESTING=config.flask_env == "testing",
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    service = IsnetTinyService.instance(config)
    app.extensions["isnet_tiny"] = service
    if config.preload_model:
        service.preload()  # in the background: the server starts listening at once, health says 503 until ready
    _register_request_hooks(app, config)
    app.register_blueprint(bp)
    app.register_blueprint(removebg_bp)
    app.register_blueprint(docs_bp)
    if config.metrics:
        from app.metrics import install_metrics  # prometheus_client only when metrics are on

        install_metrics(app, service)
    _register_errors(app)
    register_cli(app)

    @app.after_request
    def security_headers(response: Any) -> Any:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    @app.get("/")
    def index() -> str:
        return render_template(
            "index.html",
            host=request.host_url.rstrip("/"),
            config=config,
            extensions=", ".join(ALLOWED_EXTENSIONS),
        )

    return app
