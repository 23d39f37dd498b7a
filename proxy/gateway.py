"""The proxy's connection to the model server, shared by the requests of one worker.

The channel outlives model-server restarts: `GrpcClient` caps gRPC's reconnect back-off, so a
restarted server is reached again within a third of a second without replacing anything here.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from serving.client import GrpcClient, Prediction

log = logging.getLogger(__name__)

AVAILABLE = "AVAILABLE"


class ServingGateway:
    """Thread-safe access to one served model through a replaceable `GrpcClient`.

    Args:
      target: `host:port` of the gRPC server.
      model: the served model name.
      timeout_s: deadline of every call (retries included).
      retries: how many times the client retries UNAVAILABLE within the deadline.
      client_factory: builds a client for `target`; tests may pass another transport.
    """

    def __init__(self, target: str, model: str, *, timeout_s: float = 10.0, retries: int = 2,
                 client_factory: Callable[..., GrpcClient] | None = None):
        if not model:
            raise ValueError("a model name is required")
        self.target = target
        self.model = model
        self.timeout_s = timeout_s
        self.retries = retries
        self._factory = client_factory or GrpcClient
        self._lock = threading.Lock()
        self._client: GrpcClient | None = None

    def predict(self, images: Sequence[bytes]) -> Prediction:
        """Segments encoded images with the latest version of the model.

        Raises:
          serving.client.ServingError: a subclass per gRPC status code.
        """
        return self._get_client().predict(list(images), model=self.model)

    def model_status(self) -> list[tuple[int, str]]:
        """[(version, state)] of the model, e.g. [(1, 'AVAILABLE')]."""
        return self._get_client().model_status(self.model)

    def ready_versions(self) -> list[int]:
        """The versions of the model that are AVAILABLE (empty while none is)."""
        return sorted(v for v, state in self.model_status() if state == AVAILABLE)

    def close(self) -> None:
        """Closes the channel (at app shutdown)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _get_client(self) -> GrpcClient:
        # Opened on first use, not at app creation: a gunicorn worker must not inherit a channel
        # across its fork.
        with self._lock:
            if self._client is None:
                self._client = self._factory(self.target, timeout_s=self.timeout_s,
                                             retries=self.retries)
            return self._client
