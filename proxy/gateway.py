"""The proxy's connection to the model server, which survives the server restarting.

A gRPC channel reconnects by itself, but after a failed connection it waits out an exponential
back-off (1 s growing to 2 min) before trying again, so a proxy holding one channel could keep
answering 503 long after the server is back. The gateway therefore drops its client whenever a
call reports UNAVAILABLE; the next request opens a fresh channel and connects at once. Calls
already running on the old client finish on it; nothing is closed under their feet.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Sequence

from serving.client import GrpcClient, Prediction, ServingUnavailable

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
        client = self._current()
        try:
            return client.predict(list(images), model=self.model)
        except ServingUnavailable:
            self._discard(client)
            raise

    def model_status(self) -> list[tuple[int, str]]:
        """[(version, state)] of the model, e.g. [(1, 'AVAILABLE')]."""
        client = self._current()
        try:
            return client.model_status(self.model)
        except ServingUnavailable:
            self._discard(client)
            raise

    def ready_versions(self) -> list[int]:
        """The versions of the model that are AVAILABLE (empty while none is)."""
        return sorted(v for v, state in self.model_status() if state == AVAILABLE)

    def close(self) -> None:
        """Closes the current channel (at app shutdown)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def _current(self) -> GrpcClient:
        with self._lock:
            if self._client is None:
                self._client = self._factory(self.target, timeout_s=self.timeout_s,
                                             retries=self.retries)
            return self._client

    def _discard(self, client: GrpcClient) -> None:
        with self._lock:
            if self._client is client:
                log.info("model server %s unavailable; reconnecting on the next call",
                         self.target)
                self._client = None
