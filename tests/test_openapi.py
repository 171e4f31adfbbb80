"""The OpenAPI document matches the app's routes, and a schemathesis run against it finds no 500."""
from __future__ import annotations

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate

from app import create_app
from app.services.isnet_tiny_service import IsnetTinyService


def routes(app: Flask) -> set[tuple[str, str]]:
    """The API's routes: all but the HTML pages and their assets (/, /static, /docs)."""
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint in ("static", "index") or rule.endpoint.startswith("docs."):
            continue
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            found.add((rule.rule, method.lower()))
    return found


def documented(app: Flask) -> set[tuple[str, str]]:
    document = app.test_client().get("/api/bg/openapi.json").get_json()
    return {(path, method) for path, item in document["paths"].items() for method in item}


@pytest.mark.parametrize("extra", [{}, {"METRICS": "1"}, {"METRICS": "1", "API_KEY": "k"}])
def test_document_is_valid_and_matches_routes(make_app, extra):
    app = make_app(**extra)
    document = app.test_client().get("/api/bg/openapi.json").get_json()
    validate(document)
    assert documented(app) == routes(app)


def test_document_is_open_even_with_a_key(make_app):
    assert make_app(API_KEY="k").test_client().get("/api/bg/openapi.json").status_code == 200


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    home = tmp_path_factory.mktemp("schemathesis")
    IsnetTinyService._instance = None
    return create_app({"FLASK_ENV": "testing", "MODEL_DIR": str(home / "m"), "UPLOAD_FOLDER": str(home / "u"),
                       "PROCESSED_FOLDER": str(home / "p"), "METRICS": "1"})


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app: Flask):
    return schemathesis.openapi.from_wsgi("/api/bg/openapi.json", fuzz_app)


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors_for_generated_requests(case):
    """No 5xx, and every response conforms to the document (status, content type, body schema, headers).

    Left out: negative_data_rejection (the form is deliberately lenient: case-insensitive values, empty
    fields mean the default) and positive_data_acceptance (a schema-valid `file` of random bytes is
    still not an image, and rightly gets 415).
    """
    case.call_and_validate(
        excluded_checks=[schemathesis.checks.negative_data_rejection, schemathesis.checks.positive_data_acceptance]
    )
