"""The error every part of the model server raises for a request it refuses (TensorFlow-free)."""
from __future__ import annotations

import grpc


class RequestError(Exception):
    """A request the server answers with a non-OK status (code as in TF Serving).

    gRPC aborts with `code`; REST answers `serving.protocol.http_status(code)`.
    """

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(" ".join(str(message).split()))
        self.code = code
