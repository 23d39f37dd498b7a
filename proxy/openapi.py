"""The OpenAPI 3 document served at `GET /openapi.json`.

Written by hand next to the routes, and kept honest by the tests: schemathesis generates
requests from it and validates every response (status code, content type, body schema).
"""
from __future__ import annotations

from typing import Any

from cityseg import vocabulary as V

API_VERSION = "1.0.0"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict:
    return _json(_ref("Error"), description)


_PNG = {"description": "PNG image",
        "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}
_NULLABLE_NUMBER = {"type": "number", "minimum": 0, "maximum": 1, "nullable": True}

_ID_PARAM = {
    "name": "image_id", "in": "path", "required": True,
    "description": "a Cityscapes image id, e.g. frankfurt_000000_000294",
    "schema": {"type": "string", "pattern": f"^{V.IMAGE_ID_PATTERN}$",
               "maxLength": V.MAX_IMAGE_ID_LENGTH},
}
_STYLE_PARAM = {
    "name": "style", "in": "query", "required": False,
    "description": "`ids` (default): one channel of category ids 0..7; `color`: RGB palette",
    "schema": {"type": "string", "enum": ["ids", "color"], "default": "ids"},
}


def _iou_schema(names: list[str]) -> dict:
    return {"type": "object", "required": names, "additionalProperties": False,
            "properties": {name: _NULLABLE_NUMBER for name in names}}


def _int_query(name: str, low: int, high: int, default: int, what: str) -> dict:
    return {"name": name, "in": "query", "required": False, "description": what,
            "schema": {"type": "integer", "minimum": low, "maximum": high, "default": default}}


def _image_route(summary: str, ok: dict, *, style: bool, serving: bool) -> dict:
    responses = {
        "200": ok,
        "400": _error("malformed image id or query"),
        "404": _error("unknown image id, or its files are unavailable"),
        "500": _error("a stored image or label of this id is corrupt"),
    }
    if serving:
        responses.update({
            "502": _error("the model server failed"),
            "503": _error("the model server is unavailable"),
            "504": _error("the model server timed out"),
        })
    params = [_ID_PARAM] + ([_STYLE_PARAM] if style else [])
    return {"get": {"summary": summary, "parameters": params, "responses": responses}}


def _schemas() -> dict[str, Any]:
    category_names = list(V.CATEGORIES)
    evaluated = [V.CATEGORIES[c] for c in V.EVALUATED_CATEGORIES]
    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "ImageSummary": {
            "type": "object", "required": ["image_id", "split", "city", "height", "width"],
            "properties": {
                "image_id": {"type": "string", "pattern": f"^{V.IMAGE_ID_PATTERN}$"},
                "split": {"type": "string", "enum": list(V.SPLITS)},
                "city": {"type": "string"},
                "height": {"type": "integer", "minimum": 1},
                "width": {"type": "integer", "minimum": 1},
            }},
        "ImageList": {
            "type": "object",
            "required": ["total", "limit", "offset", "images", "splits", "cities"],
            "properties": {
                "total": {"type": "integer", "minimum": 0},
                "limit": {"type": "integer", "minimum": 1},
                "offset": {"type": "integer", "minimum": 0},
                "images": {"type": "array", "items": _ref("ImageSummary")},
                "splits": {"type": "object", "description": "images per split",
                           "additionalProperties": {"type": "integer", "minimum": 0}},
                "cities": {"type": "array", "items": {"type": "string"}},
            }},
        "Category": {
            "type": "object", "required": ["id", "name", "color"],
            "properties": {
                "id": {"type": "integer", "minimum": 0, "maximum": V.NUM_CATEGORIES - 1},
                "name": {"type": "string", "enum": category_names},
                "color": {"type": "string", "pattern": "^#[0-9a-f]{6}$"},
            }},
        "Metrics": {
            "type": "object", "required": ["pixel_accuracy", "mean_iou", "iou", "all_pixels"],
            "description": "Cityscapes category benchmark: ground-truth void ignored, mean IoU "
                           "over the 7 non-void categories; `all_pixels` counts every pixel "
                           "and all 8 categories. Null where undefined.",
            "properties": {
                "pixel_accuracy": _NULLABLE_NUMBER,
                "mean_iou": _NULLABLE_NUMBER,
                "iou": _iou_schema(evaluated),
                "all_pixels": {
                    "type": "object",
                    "required": ["pixels", "pixel_accuracy", "mean_iou", "iou"],
                    "properties": {
                        "pixels": {"type": "integer", "minimum": 0},
                        "pixel_accuracy": _NULLABLE_NUMBER,
                        "mean_iou": _NULLABLE_NUMBER,
                        "iou": _iou_schema(category_names),
                    }},
            }},
        "Segmentation": {
            "type": "object",
            "required": ["image_id", "split", "city", "width", "height", "model", "categories",
                         "prediction", "ground_truth", "metrics"],
            "properties": {
                "image_id": {"type": "string", "pattern": f"^{V.IMAGE_ID_PATTERN}$"},
                "split": {"type": "string", "enum": list(V.SPLITS)},
                "city": {"type": "string"},
                "width": {"type": "integer", "minimum": 1},
                "height": {"type": "integer", "minimum": 1},
                "model": {"type": "object", "required": ["name", "version"],
                          "properties": {"name": {"type": "string"},
                                         "version": {"type": "integer", "minimum": 0}}},
                "categories": {"type": "array", "items": _ref("Category"),
                               "minItems": V.NUM_CATEGORIES, "maxItems": V.NUM_CATEGORIES},
                "prediction": {"type": "string", "format": "byte",
                               "description": "PNG (base64), one channel of category ids"},
                "ground_truth": {"type": "string", "format": "byte", "nullable": True,
                                 "description": "PNG (base64) of the remapped raw label; "
                                                "null when the image has no label"},
                "metrics": {"allOf": [_ref("Metrics")], "nullable": True},
            }},
        "Health": {"type": "object", "required": ["status", "images"],
                   "properties": {"status": {"type": "string", "enum": ["ok"]},
                                  "images": {"type": "integer", "minimum": 0}}},
        "Ready": {"type": "object", "required": ["status", "model"],
                  "properties": {
                      "status": {"type": "string", "enum": ["ready"]},
                      "model": {"type": "object", "required": ["name", "versions"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "versions": {"type": "array", "minItems": 1,
                                                 "items": {"type": "integer"}}}}}},
    }


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.0 document of every route the proxy serves."""
    paths = {
        "/api/v1/images": {"get": {
            "summary": "List the image ids known to the proxy",
            "parameters": [
                {"name": "split", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": list(V.SPLITS)}},
                {"name": "city", "in": "query", "required": False,
                 "schema": {"type": "string", "pattern": "^[a-z]+(-[a-z]+)*$",
                            "maxLength": V.MAX_IMAGE_ID_LENGTH}},
                _int_query("limit", 1, 1000, 100, "page size"),
                _int_query("offset", 0, 10**9, 0, "ids to skip"),
            ],
            "responses": {"200": _json(_ref("ImageList"), "one page of ids"),
                          "400": _error("bad query parameter")},
        }},
        "/api/v1/images/{image_id}/segmentation": _image_route(
            "Prediction, ground truth and metrics of one image",
            _json(_ref("Segmentation"), "the segmentation"), style=False, serving=True),
        "/api/v1/images/{image_id}/prediction.png": _image_route(
            "The predicted mask", _PNG, style=True, serving=True),
        "/api/v1/images/{image_id}/ground_truth.png": _image_route(
            "The ground truth (official remap of the raw label)", _PNG, style=True,
            serving=False),
        "/api/v1/images/{image_id}/image.png": _image_route(
            "The raw camera image", _PNG, style=False, serving=False),
        "/api/v1/predict": {"post": {
            "summary": "Segment an uploaded PNG or JPEG",
            "parameters": [_STYLE_PARAM],
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
                "type": "object", "required": ["image"],
                "properties": {"image": {"type": "string", "format": "binary"}}}}}},
            "responses": {
                "200": _PNG,
                "400": _error("missing, empty or unreadable image"),
                "408": _error("the body did not arrive within the read deadline"),
                "413": _error("body or image too large"),
                "415": _error("not a PNG or JPEG"),
                "502": _error("the model server failed"),
                "503": _error("the model server is unavailable"),
                "504": _error("the model server timed out"),
            },
        }},
        "/healthz": {"get": {"summary": "Liveness",
                             "responses": {"200": _json(_ref("Health"), "alive")}}},
        "/readyz": {"get": {"summary": "Readiness: the model is AVAILABLE in the model server",
                            "responses": {"200": _json(_ref("Ready"), "ready"),
                                          "503": _error("not ready")}}},
        "/openapi.json": {"get": {"summary": "This document", "responses": {"200": {
            "description": "OpenAPI 3 document",
            "content": {"application/json": {"schema": {"type": "object"}}}}}}},
        "/metrics": {"get": {"summary": "Request counts and latencies (Prometheus text format)",
                             "responses": {"200": {"description": "Prometheus exposition",
                                                   "content": {"text/plain": {
                                                       "schema": {"type": "string"}}}}}}},
        "/": {"get": {"summary": "The web page", "responses": {"200": {
            "description": "HTML page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
    }
    return {
        "openapi": "3.0.3",
        "info": {"title": "cityseg proxy", "version": API_VERSION,
                 "description": "Image ids in, segmentations out: what the decision system "
                                "asks the cityseg segmentation block."},
        "paths": paths,
        "components": {"schemas": _schemas()},
    }
