"""What cityseg-serve and its clients agree on beyond TF Serving's messages (TensorFlow-free).

The gRPC-status-to-HTTP table of TF Serving's REST API (the server answers with it, the REST
client reads it back), the header naming the version that answered a REST predict, and the
message size both ends allow. Only `grpc` is imported, so the client and the proxy can take
these without loading TensorFlow, and the server without loading the client.
"""
from __future__ import annotations

import grpc

# A 2048x1024 RGB PNG is up to ~6 MB; 64 MiB leaves room for batches of them.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# cityseg-serve names the version that answered a REST predict here (TF Serving does not).
MODEL_VERSION_HEADER = "X-Model-Version"

# model_servers/http_server.cc: ToHTTPStatusCode.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}

# Read back, the first code of the table wins where several share a status (400 is
# INVALID_ARGUMENT, 500 UNKNOWN); 408 is what an HTTP front (a load balancer) sends on timeout.
_CODE_FOR_HTTP: dict[int, grpc.StatusCode] = {408: grpc.StatusCode.DEADLINE_EXCEEDED}
for _code, _status in HTTP_STATUS.items():
    _CODE_FOR_HTTP.setdefault(_status, _code)


def http_status(code: grpc.StatusCode) -> int:
    """The HTTP status TF Serving's REST API answers for a gRPC status code (500 if unknown)."""
    return HTTP_STATUS.get(code, 500)


def status_code(http: int) -> grpc.StatusCode:
    """The gRPC status code an HTTP error status stands for (UNKNOWN for any other status)."""
    return _CODE_FOR_HTTP.get(http, grpc.StatusCode.UNKNOWN)
