"""One loaded SavedModel version (a servable): its signatures, input checks and runners.

What the registry routes requests to. The registry decides which versions are loaded (its
version policy, polling, swaps); this module only loads one version, warms it up, checks
inputs against its signatures as TF Serving does, runs them (through a `Batcher` when batching
is on) and counts the requests in flight so that an unload can wait for them. Before a call it
applies the server's request limits (batch, pixels) and waits for a turn in the server's work
queue, which drops requests whose caller left; batches check their callers themselves.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from typing import Callable

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl
from tensorflow_serving.apis import prediction_log_pb2

from cityseg import vocabulary as V
from serving.admission import ANYONE, Caller, WorkQueue
from serving.batching import Batcher
from serving.config import BatchingOptions
from serving.errors import RequestError
from serving.limits import RequestLimits, trim_heap


# Paces are learnt from calls of at least 1 Mpx, where the work per pixel outweighs the fixed
# cost of a call (on small images the pace would overstate it), and only half the predicted
# time is required, so that only calls that clearly cannot finish are refused.
_PACE_MIN_PIXELS = 1024 * 1024
_PACE_MARGIN = 0.5


class LoadedVersion:
    """One loaded SavedModel version: its signatures and its in-flight request count."""

    def __init__(self, name: str, version: int, path: str, batching: BatchingOptions | None,
                 on_batch: Callable[[str, int], None] | None = None, *,
                 limits: RequestLimits = RequestLimits(), work: WorkQueue | None = None):
        self.name = name
        self.version = version
        self.path = os.fspath(path)  # a local folder or a URL: TF reads both through gfile
        self.limits = limits
        self._work = work
        # The fastest each signature has run large images, in seconds per pixel: a call whose
        # deadline leaves less than half of what that pace predicts is refused, not started.
        self._seconds_per_pixel: dict[str, float] = {}
        self._module = tf.saved_model.load(self.path)
        self.signatures = dict(self._module.signatures)
        if not self.signatures:
            raise ValueError(f"{path} has no signatures to serve")
        # The SignatureDefs as written, for GetModelMetadata (TF Serving returns these).
        saved_model = loader_impl.parse_saved_model(self.path)
        self.signature_defs = dict(saved_model.meta_graphs[0].signature_def)
        self.input_specs = {name: _input_specs(fn) for name, fn in self.signatures.items()}
        self._inflight = 0
        self._lock = threading.Condition()
        self._batchers = {}
        if batching is not None:
            observe = None if on_batch is None else functools.partial(on_batch, name)
            self._batchers = {sig: Batcher(self._make_runner(sig), batching,
                                           label=f"{name}/{version}/{sig}", on_batch=observe)
                              for sig in self.signatures}

    def run(self, signature: str, inputs: dict[str, np.ndarray],
            output_filter: tuple[str, ...] = (), caller: Caller = ANYONE) -> dict[str, np.ndarray]:
        """Validates inputs against the signature and limits, and runs it when its turn comes.

        Raises:
          RequestError: FAILED_PRECONDITION for an unknown signature (as TF Serving),
            INVALID_ARGUMENT for bad inputs, inputs over the limits or a TF op that rejects
            them (e.g. undecodable image bytes), CANCELLED or DEADLINE_EXCEEDED when the
            caller left before the call started (or its deadline cannot be met),
            UNAVAILABLE when the work or batch queue is full.
        """
        pixels = self._check(signature, inputs)
        batcher = self._batchers.get(signature)
        if batcher is not None:
            outputs = batcher.submit(inputs, caller)
        else:
            needs_s = self._seconds_per_pixel.get(signature, 0.0) * pixels * _PACE_MARGIN
            with self._work.turn(caller, needs_s) if self._work else contextlib.nullcontext():
                started = time.perf_counter()
                outputs = self._make_runner(signature)(inputs)
                if pixels >= _PACE_MIN_PIXELS:
                    pace = (time.perf_counter() - started) / pixels
                    self._seconds_per_pixel[signature] = min(
                        pace, self._seconds_per_pixel.get(signature, pace))
        # Only once nothing else runs: trimming under a running call would hand back pages
        # that call is about to fault in again.
        if 0 < self.limits.trim_after_pixels <= pixels and (self._work is None
                                                             or self._work.idle()):
            trim_heap()
        if output_filter:
            unknown = [k for k in output_filter if k not in outputs]
            if unknown:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"output tensor alias not found in signature: {unknown[0]}")
            outputs = {k: outputs[k] for k in output_filter}
        return outputs

    def _check(self, signature: str, inputs: dict[str, np.ndarray]) -> int:
        """Checks the signature, the inputs and the limits; returns the request's pixels."""
        if signature not in self.signatures:
            raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                               f"Serving signature name: \"{signature}\" not found in signature "
                               f"def (available: {', '.join(sorted(self.signatures))})")
        validate_inputs(self.input_specs[signature], inputs)
        return self.limits.check(inputs)

    def warm_up(self) -> int:
        """Replays `assets.extra/tf_serving_warmup_requests` like TF Serving; returns the count."""
        path = os.path.join(self.path, "assets.extra", V.WARMUP_FILE)
        if not tf.io.gfile.exists(path):
            return 0
        count = 0
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            log_entry = prediction_log_pb2.PredictionLog.FromString(record)
            if not log_entry.HasField("predict_log"):
                continue
            request = log_entry.predict_log.request
            inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            signature = request.model_spec.signature_name or V.SIGNATURE_NAME
            # Straight to the signature, as TF Serving warms up: the version is not routable
            # yet, so its warm-up neither waits in the work queue nor fills a batch.
            self._check(signature, inputs)
            self._make_runner(signature)(inputs)
            count += 1
        return count

    def _make_runner(self, signature: str) -> Callable[[dict], dict]:
        function = self.signatures[signature]

        def run(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            try:
                result = function(**{k: tf.constant(v) for k, v in inputs.items()})
            except tf.errors.OpError as err:
                # The TF op's own status (INVALID_ARGUMENT for undecodable images) passes on.
                raise RequestError(_status_from_tf(err), err.message) from None
            except (TypeError, ValueError) as err:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(err)) from None
            return {k: v.numpy() for k, v in result.items()}

        return run

    def acquire(self) -> None:
        with self._lock:
            self._inflight += 1

    def release(self) -> None:
        with self._lock:
            self._inflight -= 1
            self._lock.notify_all()

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        """Blocks until no request uses this version; False if `timeout_s` passed first."""
        with self._lock:
            return self._lock.wait_for(lambda: self._inflight == 0, timeout_s)

    def close(self) -> None:
        for batcher in self._batchers.values():
            batcher.close()
        self._batchers = {}
        self.signatures = {}
        self._module = None


def _input_specs(function) -> dict:
    """{input key: tf.TensorSpec} from a signature's structured_input_signature."""
    args, kwargs = function.structured_input_signature
    specs = dict(kwargs)
    for spec in args:
        if getattr(spec, "name", None):
            specs[spec.name] = spec
    return specs


def validate_inputs(specs: dict, inputs: dict[str, np.ndarray]) -> None:
    """Checks input keys, dtypes and shapes against a signature, as TF Serving does.

    Raises:
      RequestError: INVALID_ARGUMENT naming the first problem.
    """
    missing = sorted(set(specs) - set(inputs))
    extra = sorted(set(inputs) - set(specs))
    if extra or missing:
        raise RequestError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"input keys {sorted(inputs)} do not match the signature's inputs {sorted(specs)}"
            + (f" (unexpected: {extra})" if extra else "")
            + (f" (missing: {missing})" if missing else ""))
    for key, spec in specs.items():
        value = inputs[key]
        expected = spec.dtype.as_numpy_dtype
        if spec.dtype.name == "string":
            if value.dtype.kind not in "OSU":
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   f"input {key!r} expects dtype string, got {value.dtype}")
        elif value.dtype != np.dtype(expected):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r} expects dtype {spec.dtype.name}, got {value.dtype}")
        if not spec.shape.is_compatible_with(value.shape):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"input {key!r} expects shape {spec.shape}, got {value.shape}")


def _status_from_tf(err) -> grpc.StatusCode:
    # tf.errors codes are the canonical status codes, the same numbers gRPC uses.
    for code in grpc.StatusCode:
        if code.value[0] == err.error_code:
            return code
    return grpc.StatusCode.UNKNOWN
