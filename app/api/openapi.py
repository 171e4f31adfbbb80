"""The OpenAPI 3 description of the HTTP API, written by hand and kept true by tests/test_openapi.py."""
from __future__ import annotations

from typing import Any

from app.config import ALLOWED_EXTENSIONS, Config

ERROR = {"$ref": "#/components/schemas/Error"}


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": ERROR}}}
    if retry:
        response["headers"] = {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}}
    return response


def _image_errors(auth: bool) -> dict[str, Any]:
    errors = {
        "400": _error("bad form: no file, empty file, bad option or colour"),
        "413": _error("upload over the size limit, or too many pixels"),
        "415": _error("not an image we accept"),
        "422": _error("truncated or corrupt image"),
        "503": _error("model loading, building or failed; or the server is busy", retry=True),
    }
    if auth:
        errors["401"] = _error("missing or wrong API key")
    return errors


def _image_response(prefix: str, default: str) -> dict[str, Any]:
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {
        "description": f"the result as an attachment, `{prefix}_<stem>.<ext>` (default {default})",
        "headers": {"Content-Disposition": {"schema": {"type": "string"}}},
        "content": {"image/png": binary, "image/webp": binary, "image/jpeg": binary},
    }


def _form(extra: dict[str, Any]) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "file": {"type": "string", "format": "binary",
                 "description": f"the image: {', '.join(ALLOWED_EXTENSIONS)}"},
        "format": {"type": "string", "enum": ["png", "webp", "jpeg"]},
        "only_mask": {"type": "string", "enum": ["true", "false"], "description": "return the 8-bit mask alone"},
        "crop": {"type": "string", "enum": ["true", "false"], "description": "crop to the subject"},
        "crop_margin": {"type": "string", "description": "margin around the crop: '20', '20px' or '10%'",
                        "example": "10%"},
        "max_dimension": {"type": "string", "pattern": "^[0-9]*$",
                          "description": "long side of the result, at most the server's MAX_DIMENSION"},
        **extra,
    }
    return {
        "required": True,
        "content": {"multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                                       "properties": properties}}},
    }


def openapi_document(config: Config, metrics: bool) -> dict[str, Any]:
    """The document for this server's configuration (limits, whether a key or /metrics exist)."""
    auth = config.api_key is not None
    security = [{"bearer": []}, {"apiKey": []}] if auth else []
    color = {"type": "string", "description": "'#RGB', '#RRGGBB', '#RRGGBBAA', 'R,G,B' or a CSS name; default white",
             "example": "#00FF00"}
    bg_image = {"type": "string", "format": "binary", "description": "a background image, scaled to cover"}
    paths: dict[str, Any] = {
        "/api/bg/remove": {"post": {
            "summary": "Remove the background",
            "description": f"Transparent cutout. Uploads up to {config.max_file_size_mb} MB; results at most "
                           f"{config.max_dimension} px on the long side.",
            "operationId": "remove", "security": security,
            "requestBody": _form({}),
            "responses": {"200": _image_response("nobg", "PNG"), **_image_errors(auth)},
        }},
        "/api/bg/change_color": {"post": {
            "summary": "Replace the background with a colour or an image",
            "operationId": "changeColor", "security": security,
            "requestBody": _form({"color": color, "bg_image": bg_image}),
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
    if metrics:
        paths["/metrics"] = {"get": {
            "summary": "Prometheus metrics", "operationId": "metrics", "security": security,
            "responses": {"200": {"description": "text exposition format",
                                  "content": {"text/plain": {"schema": {"type": "string"}}}},
                          **({"401": _error("missing or wrong API key")} if auth else {})},
        }}
    return {
        "openapi": "3.0.3",
        "info": {"title": "PixPort ISNet Tiny", "version": "1.0.0",
                 "description": "Background removal over HTTP. Errors are JSON {\"error\": \"...\"}."},
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}},
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
