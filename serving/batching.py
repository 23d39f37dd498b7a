"""Server-side batching: concurrent requests to one signature merged into one call.

The semantics follow TF Serving's BatchingParameters: a batch is closed when it holds
`max_batch_size` rows or when its first request has waited `batch_timeout_micros`; at most
`max_enqueued_batches` batches wait (more are refused with UNAVAILABLE, as TF Serving does);
`num_batch_threads` batches run at once. Requests whose inputs cannot be stacked (different
trailing shapes) run in a batch of their own. A request whose caller has left (cancelled, or
past its deadline) by the time a batch takes it is not run (`admission.caller_left`).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from typing import Callable

import grpc
import numpy as np

from serving.admission import ANYONE, Caller, caller_left
from serving.config import BatchingOptions
from serving.errors import RequestError

log = logging.getLogger(__name__)

Inputs = dict[str, np.ndarray]


class _Task:
    __slots__ = ("inputs", "rows", "future", "caller")

    def __init__(self, inputs: Inputs, caller: Caller):
        self.inputs = inputs
        self.caller = caller
        self.rows = _rows(inputs)
        self.future: Future = Future()


def _rows(inputs: Inputs) -> int | None:
    sizes = {v.shape[0] if v.ndim else None for v in inputs.values()}
    return sizes.pop() if len(sizes) == 1 else None


class Batcher:
    """Merges concurrent `submit()` calls into calls of `run` on stacked inputs.

    Args:
      run: the signature call; takes and returns arrays batched along their first axis.
      options: TF Serving's batching parameters.
      label: names the batch threads.
      on_batch: told the row count of every merged call (the server's batch-size metric).
    """

    def __init__(self, run: Callable[[Inputs], Inputs], options: BatchingOptions, *,
                 label: str = "batcher", on_batch: Callable[[int], None] | None = None):
        self._run = run
        self._on_batch = on_batch
        self.options = options
        self._queue: queue.Queue[_Task | None] = queue.Queue(
            maxsize=options.max_enqueued_batches * options.max_batch_size)
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"{label}-{i}", daemon=True)
                         for i in range(options.num_batch_threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, inputs: Inputs, caller: Caller = ANYONE) -> Inputs:
        """Runs `inputs` as part of a batch and returns this request's rows of the outputs.

        Raises:
          RequestError: UNAVAILABLE when the queue is full or the model unloads, CANCELLED or
            DEADLINE_EXCEEDED when the caller left before a batch took the request.
        """
        task = _Task(inputs, caller)
        if caller.left():
            raise caller_left(caller)
        if task.rows is None or task.rows > self.options.max_batch_size:
            return self._run(inputs)  # too big or not batchable: run it on its own
        if self._closed:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, "model is unloading")
        try:
            self._queue.put_nowait(task)
        except queue.Full:
            raise RequestError(grpc.StatusCode.UNAVAILABLE,
                               "the batch queue is full; retry later") from None
        return task.future.result()

    def close(self) -> None:
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join(timeout=5)

    def _loop(self) -> None:
        timeout_s = self.options.batch_timeout_micros / 1e6
        while True:
            first = self._queue.get()
            if first is None:
                return
            if self._dropped(first):
                continue
            batch, rows = [first], first.rows
            deadline = time.monotonic() + timeout_s
            stop = False
            while rows < self.options.max_batch_size:
                remaining = deadline - time.monotonic()
                try:
                    task = self._queue.get(timeout=remaining) if remaining > 0 \
                        else self._queue.get_nowait()
                except queue.Empty:
                    break
                if task is None:
                    stop = True
                    break
                if self._dropped(task):
                    continue
                if rows + task.rows > self.options.max_batch_size:
                    self._execute(batch)
                    batch, rows = [], 0
                batch.append(task)
                rows += task.rows
            self._execute(batch)
            if stop:
                return

    @staticmethod
    def _dropped(task: _Task) -> bool:
        """Answers a task whose caller left (True) instead of batching it in."""
        if not task.caller.left():
            return False
        task.future.set_exception(caller_left(task.caller))
        return True

    def _execute(self, batch: list[_Task]) -> None:
        batch = [task for task in batch if not self._dropped(task)]
        if not batch:
            return
        groups: list[list[_Task]] = []
        for task in batch:  # only requests with the same trailing shapes can be stacked
            for group in groups:
                if _stackable(group[0].inputs, task.inputs):
                    group.append(task)
                    break
            else:
                groups.append([task])
        for group in groups:
            self._execute_group(group)

    def _execute_group(self, group: list[_Task]) -> None:
        total = sum(t.rows for t in group)
        if self._on_batch is not None:
            self._on_batch(total)
        try:
            stacked = {k: np.concatenate([t.inputs[k] for t in group]) for k in group[0].inputs}
            outputs = self._run(stacked)
            if any(np.ndim(v) == 0 or np.shape(v)[0] != total for v in outputs.values()):
                raise ValueError("outputs are not batched along the first axis")
        except (ValueError, RequestError) as err:
            # Outputs that do not follow the batch, or one bad request (e.g. undecodable
            # bytes) spoiling the batch: run each request alone so only the bad one fails.
            if isinstance(err, RequestError) and len(group) == 1:
                group[0].future.set_exception(err)
                return
            for task in group:
                self._resolve(task, lambda t=task: self._run(t.inputs))
            return
        except Exception as err:  # noqa: BLE001 - forwarded to every waiting request
            for task in group:
                task.future.set_exception(err)
            return
        start = 0
        for task in group:
            end = start + task.rows
            task.future.set_result({k: v[start:end] for k, v in outputs.items()})
            start = end

    @staticmethod
    def _resolve(task: _Task, call: Callable[[], Inputs]) -> None:
        try:
            task.future.set_result(call())
        except Exception as err:  # noqa: BLE001 - forwarded to the waiting request
            task.future.set_exception(err)


def _stackable(a: Inputs, b: Inputs) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape[1:] == b[k].shape[1:] and a[k].dtype.kind == b[k].dtype.kind for k in a)
