"""The proxy's connection to the model server, which survives the server restarting.

A gRPC channel reconnects by itself, but after a failed connection it waits out an exponential
back-off (1 s growing to 2 min) before trying again, and a new channel to the same address
shares that state for as long as the old one is open (gRPC's global subchannel pool). A proxy
holding one channel could therefore keep answering 503 long after the server is back.

So the gateway retires its client whenever a call reports UNAVAILABLE: the next request opens
a fresh channel, and the retired one is closed as soon as the calls still running on it have
finished (never under their feet), which releases the stale connection state.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

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
        self._lease: _Lease | None = None

    def predict(self, images: Sequence[bytes]) -> Prediction:
        """Segments encoded images with the latest version of the model.

        Raises:
          serving.client.ServingError: a subclass per gRPC status code.
        """
        with self._client_for_call() as client:
            return client.predict(list(images), model=self.model)

    def model_status(self) -> list[tuple[int, str]]:
        """[(version, state)] of the model, e.g. [(1, 'AVAILABLE')]."""
        with self._client_for_call() as client:
            return client.model_status(self.model)

    def ready_versions(self) -> list[int]:
        """The versions of the model that are AVAILABLE (empty while none is)."""
        return sorted(v for v, state in self.model_status() if state == AVAILABLE)

    def close(self) -> None:
        """Closes the current channel (at app shutdown)."""
        with self._lock:
            lease, self._lease = self._lease, None
        if lease is not None:
            lease.client.close()

    @contextmanager
    def _client_for_call(self) -> Iterator[GrpcClient]:
        with self._lock:
            if self._lease is None:
                self._lease = _Lease(self._factory(self.target, timeout_s=self.timeout_s,
                                                   retries=self.retries))
            lease = self._lease
            lease.active += 1
        unavailable = False
        try:
            yield lease.client
        except ServingUnavailable:
            unavailable = True
            raise
        finally:
            with self._lock:
                lease.active -= 1
                if unavailable and self._lease is lease:
                    log.info("model server %s unavailable; reconnecting on the next call",
                             self.target)
                    self._lease = None
                    lease.retired = True
                close_now = lease.retired and lease.active == 0 and not lease.closed
                if close_now:
                    lease.closed = True
            if close_now:
                lease.client.close()


class _Lease:
    """A client and the number of calls running on it."""

    def __init__(self, client: GrpcClient):
        self.client = client
        self.active = 0
        self.retired = False
        self.closed = False
