"""The Batcher on its own: merged calls, rows back to their callers, isolation, a full queue.

The signature it batches is a plain numpy function here (no TensorFlow): what is under test is
the merging, splitting and failure handling, with real threads and real timing.
"""
from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest

from serving.batching import Batcher
from serving.config import BatchingOptions
from serving.errors import RequestError

WAIT_S = 30  # generous bound on any wait: a failing test fails, it never hangs


class Signature:
    """`x` -> `{"doubled": 2x, "row": x's row index in the merged call}`; records each call.

    A row holding -1 spoils the whole call with INVALID_ARGUMENT, as one undecodable image
    spoils a batched DecodeImage. `gate` (if given) holds every call until it is set.
    """

    def __init__(self, gate: threading.Event | None = None):
        self.calls: list[np.ndarray] = []
        self.started = threading.Event()
        self.gate = gate
        self._lock = threading.Lock()

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = inputs["x"]
        with self._lock:
            self.calls.append(x.copy())
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(WAIT_S)
        if (x == -1).any():
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "row -1 cannot be decoded")
        return {"doubled": 2 * x, "row": np.arange(len(x))}


def options(**changes) -> BatchingOptions:
    values = dict(max_batch_size=8, batch_timeout_micros=10_000_000, max_enqueued_batches=4,
                  num_batch_threads=1)
    values.update(changes)
    return BatchingOptions(**values)


@pytest.fixture
def make_batcher():
    made = []

    def make(signature, **changes) -> Batcher:
        batcher = Batcher(signature, options(**changes), label="test")
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


class Caller:
    """One `submit` in a daemon thread of its own (a caller that never gets an answer cannot
    hang the test run); `result()` is its answer or the RequestError it raised."""

    def __init__(self, batcher: Batcher, x: np.ndarray):
        self.done = threading.Event()
        self._answer = None
        threading.Thread(target=self._call, args=(batcher, x), daemon=True).start()

    def _call(self, batcher: Batcher, x: np.ndarray) -> None:
        try:
            self._answer = batcher.submit({"x": x})
        except RequestError as err:
            self._answer = err
        finally:
            self.done.set()

    def result(self):
        assert self.done.wait(WAIT_S), "a caller got no answer"
        return self._answer


def submit_all(batcher: Batcher, requests: list[np.ndarray]) -> list:
    """Submits every request at once, each from its own thread; returns their results."""
    callers = [Caller(batcher, x) for x in requests]
    return [caller.result() for caller in callers]


def test_rows_go_back_to_their_callers_in_order(make_batcher):
    signature = Signature()
    # 2 + 1 + 3 rows fill a batch of 6: the batch closes when full, not at the (long) timeout.
    batcher = make_batcher(signature, max_batch_size=6)
    requests = [np.array([10, 11]), np.array([20]), np.array([30, 31, 32])]
    answers = submit_all(batcher, requests)

    assert len(signature.calls) == 1  # one merged call ...
    merged = signature.calls[0]
    assert sorted(merged.tolist()) == [10, 11, 20, 30, 31, 32]
    for x, answer in zip(requests, answers):  # ... and each caller got its own rows, in order
        np.testing.assert_array_equal(answer["doubled"], 2 * x)
        start = merged.tolist().index(x[0])
        np.testing.assert_array_equal(answer["row"], np.arange(start, start + len(x)))
        np.testing.assert_array_equal(merged[start:start + len(x)], x)


def test_one_bad_request_fails_alone_and_the_others_answer(make_batcher):
    signature = Signature()
    batcher = make_batcher(signature, max_batch_size=3)
    answers = submit_all(batcher, [np.array([1]), np.array([-1]), np.array([3])])

    assert sorted(signature.calls[0].tolist()) == [-1, 1, 3]  # they were merged, and it failed
    assert isinstance(answers[1], RequestError)
    assert answers[1].code == grpc.StatusCode.INVALID_ARGUMENT
    np.testing.assert_array_equal(answers[0]["doubled"], [2])
    np.testing.assert_array_equal(answers[2]["doubled"], [6])
    # Re-run one by one: the merged call, then each request alone.
    assert sorted(len(c) for c in signature.calls) == [1, 1, 1, 3]


def test_a_full_queue_answers_unavailable_at_once_and_the_queued_request_still_runs(
        make_batcher):
    gate = threading.Event()
    signature = Signature(gate)
    # One batch thread, batches of one row, room for one waiting batch.
    batcher = make_batcher(signature, max_batch_size=1, max_enqueued_batches=1)
    running = Caller(batcher, np.array([1]))
    try:
        assert signature.started.wait(WAIT_S)  # the batch thread is busy with request 1
        later = [Caller(batcher, np.array([2])), Caller(batcher, np.array([3]))]
        # One of them takes the queue's only place and waits; the other is refused at once,
        # while request 1 still runs.
        # Polled against a deadline (`started` is already set: waiting on it never slept, so
        # the loop once gave up within microseconds when the callers' threads were slow).
        refused = None
        deadline = time.monotonic() + WAIT_S
        while refused is None and time.monotonic() < deadline:
            refused = next((c for c in later if c.done.is_set()), None)
            time.sleep(0.01)
        assert refused is not None and not running.done.is_set()
        assert sum(c.done.is_set() for c in later) == 1
    finally:
        gate.set()
    queued = next(c for c in later if c is not refused)
    error = refused.result()
    assert isinstance(error, RequestError) and error.code == grpc.StatusCode.UNAVAILABLE
    assert "queue is full" in str(error)
    np.testing.assert_array_equal(running.result()["doubled"], [2])
    assert queued.result()["doubled"].tolist() in ([4], [6])
    assert [c.tolist() for c in signature.calls][0] == [1] and len(signature.calls) == 2


def test_a_request_whose_caller_left_is_not_batched_in(make_batcher):
    from serving.admission import Caller as Client

    gate = threading.Event()
    signature = Signature(gate)
    batcher = make_batcher(signature, max_batch_size=1)
    running = Caller(batcher, np.array([1]))
    assert signature.started.wait(WAIT_S)  # the batch thread is busy with request 1
    checks = iter([True])  # there when it submits, gone by the time a batch could take it
    answers = []
    left = threading.Thread(target=lambda: answers.append(_submit(
        batcher, np.array([2]), Client(is_active=lambda: next(checks, False)))), daemon=True)
    left.start()
    while batcher._queue.qsize() == 0:  # noqa: SLF001 - queued behind request 1
        time.sleep(0.001)
    gate.set()
    left.join(WAIT_S)
    assert isinstance(answers[0], RequestError)
    assert answers[0].code == grpc.StatusCode.CANCELLED
    np.testing.assert_array_equal(running.result()["doubled"], [2])
    assert [c.tolist() for c in signature.calls] == [[1]]  # request 2 never ran


def _submit(batcher: Batcher, x: np.ndarray, caller):
    try:
        return batcher.submit({"x": x}, caller)
    except RequestError as err:
        return err
