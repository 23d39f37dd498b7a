"""The OpenAPI document is valid and every GET response matches it (schemathesis, in-process).

Schemathesis loads `/openapi.json` from the WSGI app, checks it against the OpenAPI 3.0
meta-schema, generates requests for each GET operation from the document (bounded examples)
and validates each response: status code documented, content type documented, body matching
the schema, and no 5xx. The model server behind the app is the real one.
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings


@pytest.fixture
def api_schema(app):
    return schemathesis.openapi.from_wsgi("/openapi.json", app)


def test_document_is_valid_openapi(api_schema):
    api_schema.validate()  # raises on any violation of the OpenAPI 3.0 meta-schema
    document = api_schema.raw_schema
    assert document["openapi"].startswith("3.")
    documented = {(path, method) for path, item in document["paths"].items() for method in item}
    assert documented >= {
        ("/api/v1/images", "get"), ("/api/v1/images/{image_id}/segmentation", "get"),
        ("/api/v1/images/{image_id}/prediction.png", "get"),
        ("/api/v1/images/{image_id}/ground_truth.png", "get"),
        ("/api/v1/images/{image_id}/image.png", "get"), ("/api/v1/predict", "post"),
        ("/healthz", "get"), ("/readyz", "get"), ("/openapi.json", "get"), ("/", "get")}


def test_every_flask_route_is_documented(app, api_schema):
    paths = set(api_schema.raw_schema["paths"])
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        templated = rule.rule.replace("<path:image_id>", "{image_id}")
        assert templated in paths, f"{rule.rule} is missing from openapi.json"


def test_real_responses_match_their_schemas(client, api_schema):
    # Generated examples mostly hit unknown ids; these known ones prove the 200 bodies match.
    for image_id in ("frankfurt_000000_000294", "berlin_000000_000001"):
        for suffix in ("segmentation", "prediction.png", "image.png"):
            path = f"/api/v1/images/{image_id}/{suffix}"
            response = client.get(path)
            operation = api_schema["/api/v1/images/{image_id}/" + suffix]["GET"]
            operation.validate_response(response)
    operation = api_schema["/api/v1/images"]["GET"]
    operation.validate_response(client.get("/api/v1/images?split=val"))
    operation.validate_response(client.get("/api/v1/images?split=nope"))


# schemathesis' own pytest loader (`schemathesis.pytest.from_fixture(...).parametrize()`) breaks
# on pytest 9 (it writes `node._nodeid`), so each operation's Hypothesis strategy is driven
# directly: the same generation and the same checks, one pytest case per operation.
GET_PATHS = [
    "/api/v1/images",
    "/api/v1/images/{image_id}/segmentation",
    "/api/v1/images/{image_id}/prediction.png",
    "/api/v1/images/{image_id}/ground_truth.png",
    "/api/v1/images/{image_id}/image.png",
    "/healthz",
    "/readyz",
    "/openapi.json",
    "/metrics",
    "/",
]


def test_generated_cases_cover_every_get_operation(api_schema):
    documented = [path for path, item in api_schema.raw_schema["paths"].items() if "get" in item]
    assert sorted(documented) == sorted(GET_PATHS)


@pytest.mark.slow
@pytest.mark.parametrize("path", GET_PATHS)
def test_generated_requests_get_documented_responses(api_schema, path):
    operation = api_schema[path]["GET"]

    @settings(max_examples=15, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy())
    def check(case):
        case.call_and_validate()

    check()
