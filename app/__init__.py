"""Application factory: configuration, blueprint, page, JSON errors, security headers, CLI commands."""
from __future__ import annotations

import logging
import tempfile
from typing import IO, Any, Mapping

from flask import Flask, Request, current_app, jsonify, render_template, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from app.config import ALLOWED_EXTENSIONS, DEFAULT_SECRET_KEY, Config
from app.errors import ApiError

log = logging.getLogger("app")

SPOOL_IN_MEMORY_BYTES = 500 * 1024
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; frame-ancestors 'none'"
)


class SpoolingRequest(Request):
    """Large uploads spool to anonymous temp files in UPLOAD_FOLDER: no name on disk, gone on close."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        if total_content_length is not None and total_content_length <= SPOOL_IN_MEMORY_BYTES:
            return super()._get_file_stream(total_content_length, content_type, filename, content_length)
        folder = current_app.config["PIXPORT"].upload_folder
        return tempfile.TemporaryFile("wb+", dir=folder)  # type: ignore[return-value]


def _error_response(message: str, status: int, retry_after: int | None = None) -> Any:
    response = jsonify({"error": message})
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def _register_errors(app: Flask) -> None:
    """One place that turns every failure into `{"error": ...}` JSON, never a traceback."""

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError) -> Any:
        if exc.status >= 500:
            log.warning("%s %s -> %d: %s", request.method, request.path, exc.status, exc.message)
        return _error_response(exc.message, exc.status, exc.retry_after)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge) -> Any:
        limit = current_app.config["PIXPORT"].max_file_size_mb
        return _error_response(f"the upload is larger than {limit} MB; send a smaller image", 413)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        response = _error_response(exc.description or exc.name, exc.code or 500)
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value  # e.g. Allow on 405
        return response

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> Any:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error_response("internal error; the request was not processed", 500)


def create_app(config: Config | Mapping[str, str] | None = None) -> Flask:
    """Build the app. `config` is a Config, an environment-like mapping (tests), or None for os.environ."""
    from app.api.bg_removal_api import bp
    from app.cli import register_cli
    from app.services.isnet_tiny_service import IsnetTinyService, tune_malloc

    if not isinstance(config, Config):
        config = Config.from_env(config)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    tune_malloc()
    app = Flask(__name__)
    app.request_class = SpoolingRequest
    app.config.update(
        PIXPORT=config,
        SECRET_KEY=config.secret_key,
        MAX_CONTENT_LENGTH=config.max_request_bytes,  # each image is checked against max_content_length
        MAX_FORM_MEMORY_SIZE=config.max_form_field_bytes,  # image_file_b64 is a text field
        TESTING=config.flask_env == "testing",
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if config.secret_key == DEFAULT_SECRET_KEY and config.flask_env == "production":
        log.warning("SECRET_KEY is not set; set it to a random value in production")

    service = IsnetTinyService.instance(config)
    app.extensions["isnet_tiny"] = service
    app.register_blueprint(bp)
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
