"""Every error the proxy returns is JSON `{"error": "..."}` with a fitting status code.

| cause | status |
|---|---|
| malformed image id, bad query or upload, serving INVALID_ARGUMENT | 400 |
| unknown image id or route, image files unavailable | 404 |
| wrong method | 405 |
| body over MAX_CONTENT_LENGTH, image over the pixel budget | 413 |
| upload that is not PNG or JPEG | 415 |
| model server unreachable or model not loaded | 503 |
| model server too slow | 504 |
| any other serving failure | 502 |
| anything unexpected | 500, with a fixed message: the traceback goes to the log only |
"""
from __future__ import annotations

import logging

from flask import Flask, Response, jsonify
from werkzeug.exceptions import HTTPException

from cityseg.vocabulary import InvalidImageIdError, InvalidLabelError
from proxy.masks import MaskError
from proxy.resolver import ImageNotFound
from serving.client import (ServingError, ServingInvalidArgument, ServingNotFound,
                            ServingTimeout, ServingUnavailable)

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying while the model server is down.
RETRY_AFTER_S = 1


def error_response(status: int, message: str, headers: dict | None = None) -> Response:
    """A JSON error body `{"error": message}` with `status`."""
    response = jsonify(error=message)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def register_error_handlers(app: Flask) -> None:
    """Installs the JSON error handlers (Flask picks the most specific class)."""

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException):
        headers = {}
        if err.code == 405:
            # Keep the Allow header werkzeug computed for the route.
            headers["Allow"] = err.get_response().headers.get("Allow", "")
        return error_response(err.code or 500, err.description or err.name, headers)

    @app.errorhandler(InvalidImageIdError)
    def bad_id(err: InvalidImageIdError):
        return error_response(400, str(err))

    @app.errorhandler(ImageNotFound)
    def unknown_id(err: ImageNotFound):
        return error_response(404, str(err))

    @app.errorhandler(ServingUnavailable)
    def serving_unavailable(err: ServingUnavailable):
        log.warning("model server unavailable: %s", err)
        return error_response(503, f"model server unavailable: {err}",
                              {"Retry-After": str(RETRY_AFTER_S)})

    @app.errorhandler(ServingNotFound)
    def model_not_served(err: ServingNotFound):
        log.warning("model not served: %s", err)
        return error_response(503, f"model not available: {err}",
                              {"Retry-After": str(RETRY_AFTER_S)})

    @app.errorhandler(ServingTimeout)
    def serving_timeout(err: ServingTimeout):
        log.warning("model server timed out: %s", err)
        return error_response(504, f"model server timed out: {err}")

    @app.errorhandler(ServingInvalidArgument)
    def serving_rejected(err: ServingInvalidArgument):
        return error_response(400, f"model server rejected the image: {err}")

    @app.errorhandler(ServingError)
    def serving_failed(err: ServingError):
        log.error("model server failed: %s", err)
        return error_response(502, f"model server failed: {err}")

    @app.errorhandler(InvalidLabelError)
    def corrupt_label(err: InvalidLabelError):
        log.error("corrupt ground truth: %s", err)
        return error_response(500, f"ground truth is corrupt: {err}")

    @app.errorhandler(MaskError)
    def corrupt_mask(err: MaskError):
        log.error("unreadable mask: %s", err)
        return error_response(502, f"unreadable mask: {err}")

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        # The traceback is for the operator's log; the client gets a fixed sentence.
        log.exception("unhandled error")
        return error_response(500, "internal server error")
