"""A request's fields from wherever the client put them: the query string, a multipart or urlencoded form, or
a JSON object. Both blueprints check the same thing once: every name is read exactly once, text is text and
files are files, so each endpoint's own rules (which names it takes) see one flat view of the request.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from flask import request
from werkzeug.datastructures import FileStorage

from app.errors import BadRequest


@dataclass
class Fields:
    """Text values by name (JSON booleans as "true"/"false", numbers as written) and uploaded files by name."""

    text: dict[str, str] = field(default_factory=dict)
    files: dict[str, FileStorage] = field(default_factory=dict)
    json: bool = False

    def names(self) -> list[str]:
        return [*self.files, *self.text]

    def get(self, name: str) -> str | None:
        """A text field's value; empty or blank counts as not sent (form UIs such as Swagger UI send every field)."""
        value = self.text.get(name)
        return value if value is not None and value.strip() else None


def _json_text(name: str, value: object) -> str | None:
    """A JSON member as the form would have carried it; null means not sent."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return format(value, "g") if isinstance(value, float) else str(value)
    if isinstance(value, str):
        return value
    raise BadRequest(f"'{name[:40]}' must be a string, a number or a boolean in a JSON body, not an "
                     f"{'array' if isinstance(value, list) else 'object'}")


def _add(found: Fields, name: str | None, value: str | FileStorage, where: str) -> None:
    if not name:  # Werkzeug gives a part whose name it cannot read None
        raise BadRequest(f"a {where} field has no readable name")
    if name in found.text or name in found.files:
        raise BadRequest(f"'{name[:40]}' was sent more than once; send it once")
    if isinstance(value, FileStorage):
        found.files[name] = value
    else:
        found.text[name] = value


def read_fields() -> Fields:
    """The query string's fields plus the body's (form or JSON object); 400 for a name given twice, a JSON
    body that is not an object, or a JSON value that is an array or object."""
    found = Fields()
    for name, value in request.args.items(multi=True):
        _add(found, name, value, "query-string")
    if request.is_json:
        body = request.get_json(silent=True)
        if body is None:
            raise BadRequest("the body is not valid JSON, though its Content-Type says application/json")
        if not isinstance(body, dict):
            raise BadRequest("the JSON body must be an object such as {\"image_url\": \"https://...\"}")
        found.json = True
        for name, value in body.items():
            text = _json_text(name, value)
            if text is not None:
                _add(found, name, text, "JSON")
        return found
    for name, upload in request.files.items(multi=True):
        _add(found, name, upload, "form")
    for name, value in request.form.items(multi=True):
        _add(found, name, value, "form")
    return found
