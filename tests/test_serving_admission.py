"""The work queue on its own: turns in order, a bound on waiting, callers that leave.

Plain threads and a plain Python "call" (no TensorFlow): what is under test is who gets to run
and when, with real timing.
"""
from __future__ import annotations

import threading
import time

import grpc
import pytest

from polling import wait_until
from serving.admission import Caller, WorkQueue
from serving.errors import RequestError

WAIT_S = 30  # generous bound on any wait: a failing test fails, it never hangs


class Waiter:
    """One `turn()` in a thread of its own; records whether the block ran, or the error."""

    def __init__(self, work: WorkQueue, ran: list, name: str, caller: Caller = Caller(),
                 needs_s: float = 0.0):
        self.done = threading.Event()
        self.error: RequestError | None = None
        self._thread = threading.Thread(target=self._wait, daemon=True,
                                        args=(work, ran, name, caller, needs_s))
        self._thread.start()

    def _wait(self, work, ran, name, caller, needs_s) -> None:
        try:
            with work.turn(caller, needs_s):
                ran.append(name)
        except RequestError as err:
            self.error = err
        finally:
            self.done.set()

    def result(self) -> RequestError | None:
        assert self.done.wait(WAIT_S), "a waiter got no answer"
        return self.error


def waiting(work: WorkQueue, count: int) -> None:
    wait_until(lambda: work.counts()[1] == count, WAIT_S, 0.005, seen=work.counts)


@pytest.fixture
def held():
    """A queue of one turn, held by the test until it sets the returned event."""
    work, release, holding = WorkQueue(max_concurrent=1, max_queued=3), threading.Event(), []

    def hold():
        with work.turn():
            holding.append(True)
            release.wait(WAIT_S)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    while not holding:
        time.sleep(0.001)
    yield work, release
    release.set()
    thread.join(WAIT_S)


def test_turns_go_in_arrival_order_and_never_over_the_bound(held):
    work, release = held
    ran: list[str] = []
    waiters = []
    for name in "abc":
        waiters.append(Waiter(work, ran, name))
        waiting(work, len(waiters))  # so that arrival order is known
    assert ran == []  # the bound holds them all while the first turn is taken
    release.set()
    assert [w.result() for w in waiters] == [None, None, None]
    assert ran == ["a", "b", "c"]


def test_a_full_queue_refuses_at_once(held):
    work, _ = held
    ran: list[str] = []
    for name in "abc":
        Waiter(work, ran, name)
    waiting(work, 3)
    started = time.monotonic()
    error = Waiter(work, ran, "d").result()
    assert error.code == grpc.StatusCode.UNAVAILABLE and time.monotonic() - started < 1


def test_callers_that_leave_while_waiting_never_run(held):
    work, release = held
    ran: list[str] = []
    gone = threading.Event()
    cancelled = Waiter(work, ran, "cancelled", Caller(is_active=lambda: not gone.is_set()))
    late = Waiter(work, ran, "late", Caller(deadline=time.monotonic() + 0.2))
    stays = Waiter(work, ran, "stays")
    waiting(work, 3)
    gone.set()
    assert cancelled.result().code == grpc.StatusCode.CANCELLED
    assert late.result().code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert not stays.done.is_set()  # still waiting for the held turn
    release.set()
    assert stays.result() is None and ran == ["stays"]


def test_a_call_that_cannot_meet_its_deadline_is_refused_without_waiting(held):
    work, _ = held
    ran: list[str] = []
    hopeless = Waiter(work, ran, "hopeless", Caller(deadline=time.monotonic() + 5), needs_s=60)
    assert hopeless.result().code == grpc.StatusCode.DEADLINE_EXCEEDED and ran == []
    assert "needs at least" in str(hopeless.error)
