"""Which requests get to run the model: a bounded queue that drops callers who left (TF-free).

TensorFlow cannot stop a signature call once it has started (its kernels do not check for
cancellation), so the server decides before starting one. At most `max_concurrent` calls run at
once (more would only share the same cores and multiply peak memory), at most `max_queued`
requests wait for a turn, first come first served (more are answered UNAVAILABLE, which clients
retry with back-off), and a request whose caller has gone (cancelled, or past its deadline)
while it waited is dropped instead of run: it is answered (and counted) DEADLINE_EXCEEDED or
CANCELLED, never OK. A request
that cannot finish before its deadline even at the fastest pace this model has shown (the
caller's estimate, `needs_s`) is answered DEADLINE_EXCEEDED at once instead of started.
"""
from __future__ import annotations

import collections
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import grpc

from serving.errors import RequestError

# How often a waiting request looks whether its caller is still there (gRPC has no wake-up for
# that here; 50 ms is small next to any model call and costs nothing while nobody waits).
_POLL_S = 0.05


def _always() -> bool:
    return True


@dataclass(frozen=True)
class Caller:
    """The client waiting for a request: still connected? answered by when (monotonic)?"""

    is_active: Callable[[], bool] = _always
    deadline: float | None = None

    @classmethod
    def of_grpc(cls, context: grpc.ServicerContext) -> "Caller":
        """The caller of a gRPC call: its deadline and `is_active` (false once it is cancelled)."""
        remaining = context.time_remaining()
        return cls(context.is_active, None if remaining is None else time.monotonic() + remaining)

    def left(self) -> bool:
        """True once the caller cancelled or its deadline passed: nobody reads the answer."""
        return (self.deadline is not None and time.monotonic() >= self.deadline) \
            or not self.is_active()


ANYONE = Caller()


def caller_left(caller: Caller, when: str = "before its request ran") -> RequestError:
    """The answer for a caller that left: DEADLINE_EXCEEDED past its deadline, else CANCELLED.

    The client has its own answer already; this is what the server logs and counts.
    """
    if caller.deadline is not None and time.monotonic() >= caller.deadline:
        return RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                            f"the caller's deadline passed {when}")
    return RequestError(grpc.StatusCode.CANCELLED, f"the caller cancelled {when}")


class WorkQueue:
    """At most `max_concurrent` holders of a turn; at most `max_queued` waiting for one.

    Args:
      max_concurrent: calls that run at once.
      max_queued: requests that may wait; one more is refused UNAVAILABLE.
    """

    def __init__(self, max_concurrent: int, max_queued: int):
        if max_concurrent < 1 or max_queued < 0:
            raise ValueError("need max_concurrent >= 1 and max_queued >= 0")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self._running = 0
        self._waiting: collections.deque[object] = collections.deque()
        self._changed = threading.Condition()

    @contextmanager
    def turn(self, caller: Caller = ANYONE, needs_s: float = 0.0) -> Iterator[None]:
        """Waits for a turn (first come first served) and holds it for the `with` block.

        Args:
          caller: who waits for the answer.
          needs_s: the least time the call can take (0: unknown).

        Raises:
          RequestError: CANCELLED or DEADLINE_EXCEEDED if the caller leaves before its turn
            (the block never runs) or its deadline leaves less than `needs_s` when its turn
            comes, UNAVAILABLE if `max_queued` requests are already waiting.
        """
        with self._changed:
            _check(caller, needs_s)
            if self._waiting or self._running >= self.max_concurrent:
                self._wait(caller)
                _check(caller, needs_s)
            self._running += 1
        try:
            yield
        finally:
            with self._changed:
                self._running -= 1
                self._changed.notify_all()

    def _wait(self, caller: Caller) -> None:
        if len(self._waiting) >= self.max_queued:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               f"the server is busy: {self._running} requests running and "
                               f"{len(self._waiting)} waiting; retry later")
        ticket = object()
        self._waiting.append(ticket)
        try:
            while self._waiting[0] is not ticket or self._running >= self.max_concurrent:
                if caller.left():
                    raise caller_left(caller)
                timeout = _POLL_S
                if caller.deadline is not None:
                    timeout = min(timeout, max(0.0, caller.deadline - time.monotonic()))
                self._changed.wait(timeout)
        finally:
            self._waiting.remove(ticket)
            self._changed.notify_all()

    def counts(self) -> tuple[int, int]:
        """(running, waiting) now."""
        with self._changed:
            return self._running, len(self._waiting)

    def idle(self) -> bool:
        """True when no call runs and none waits."""
        return self.counts() == (0, 0)


def _check(caller: Caller, needs_s: float) -> None:
    if caller.left():
        raise caller_left(caller)
    if needs_s > 0 and caller.deadline is not None:
        left_s = caller.deadline - time.monotonic()
        if left_s < needs_s:
            raise RequestError(grpc.StatusCode.DEADLINE_EXCEEDED,
                               f"the call needs at least {needs_s:.2g} s (this model's fastest "
                               f"pace for its pixels) and its deadline leaves {left_s:.2g} s")
