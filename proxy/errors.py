"""Every error the proxy returns is JSON `{"error": "..."}` with a fitting status code.

| cause | status |
|---|---|
| malformed image id, bad query or upload, serving INVALID_ARGUMENT for an upload | 400 |
| unknown image id or route, image files unavailable | 404 |
| wrong method | 405 |
| request body not received within the read deadline | 408 |
| body over MAX_CONTENT_LENGTH, image over the pixel budget | 413 |
| upload that is not PNG or JPEG | 415 |
| a stored image or label that is corrupt (the deployment's data, not the client's request) | 500 |
| model server unreachable or model not loaded | 503 |
| model server too slow | 504 |
| any other serving failure, an unreadable mask | 502 |
| anything unexpected | 500, with a fixed message: the traceback goes to the log only |

The messages are the proxy's own, one line each: what the model server said (TF node names,
file paths, peer addresses) and what a decoder printed goes to the log, never to the client.
"""
from __future__ import annotations

import logging

from flask import Flask, Response, current_app, jsonify
from werkzeug.exceptions import HTTPException

from cityseg.vocabulary import InvalidImageIdError
from proxy.masks import MaskError
from proxy.resolver import CorruptFile, ImageNotFound
from serving.client import (ServingError, ServingInvalidArgument, ServingNotFound,
                            ServingTimeout, ServingUnavailable)

log = logging.getLogger(__name__)

# Seconds a client should wait before retrying while the model server is down.
RETRY_AFTER_S = 1

# What a client is told when a call to the model server fails: (status, message). The most
# specific class wins; the server's own text goes to the log.
SERVING_FAILURES: dict[type[ServingError], tuple[int, str]] = {
    ServingUnavailable: (503, "model server unavailable"),
    ServingNotFound: (503, "model not available"),
    ServingTimeout: (504, "model server timed out"),
    ServingInvalidArgument: (400, "model server rejected the image"),
    ServingError: (502, "model server failed"),
}


def serving_failure(err: ServingError) -> tuple[int, str]:
    """The status and the proxy's own one-line message for a failed model-server call."""
    return next(SERVING_FAILURES[cls] for cls in type(err).__mro__ if cls in SERVING_FAILURES)


def log_serving_failure(err: Exception) -> None:
    """Logs what the client is not told: the server's address and what went wrong there."""
    log.warning("model server %s: %s", current_app.extensions["cityseg_gateway"].target, err)


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

    @app.errorhandler(ServingError)
    def serving_failed(err: ServingError):
        log_serving_failure(err)
        status, message = serving_failure(err)
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
        return error_response(status, message, headers)

    @app.errorhandler(CorruptFile)
    def corrupt_file(err: CorruptFile):
        # The message names the image id only; the decoder's words are for the operator.
        log.error("%s: %s", err, err.__cause__)
        return error_response(500, str(err))

    @app.errorhandler(MaskError)
    def unreadable_mask(err: MaskError):
        log_serving_failure(err)
        return error_response(502, "model server returned an unreadable mask")

    @app.errorhandler(Exception)
    def unexpected(err: Exception):
        # The traceback is for the operator's log; the client gets a fixed sentence.
        log.exception("unhandled error")
        return error_response(500, "internal server error")
