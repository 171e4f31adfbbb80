"""The interactive API page at /docs/: Swagger UI from the swagger-ui-bundle package, served by this app.

Everything comes from this origin (no CDN), and the page runs under the app's CSP (`script-src 'self'`),
so its start-up code is a static file, not an inline script.
"""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, send_file

docs_bp = Blueprint("docs", __name__, url_prefix="/docs")

OWN = Path(__file__).parent / "docs_static"
# Only the files the page loads; the package's other files (source maps, ES bundles) are not served.
VENDOR_FILES = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png")
OWN_FILES = ("docs.css", "docs-init.js")


def _vendor_dir() -> Path:
    from swagger_ui_bundle import swagger_ui_path  # imported when the page is first asked for

    return Path(str(swagger_ui_path))


@docs_bp.get("/")
def page() -> Response:
    """Swagger UI for /api/bg/openapi.json; relative links, so it also works under a path prefix."""
    response = send_file(OWN / "index.html", mimetype="text/html")
    response.headers["Cache-Control"] = "no-cache"
    return response


@docs_bp.get("/assets/<name>")
def asset(name: str) -> Response:
    if name in OWN_FILES:
        return send_file(OWN / name)
    if name in VENDOR_FILES:
        return send_file(_vendor_dir() / name)
    abort(404)
