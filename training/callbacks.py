"""The trainer's own Keras callbacks: what Keras lacks beside its BackupAndRestore and CSVLogger.

Keras provides the resumable checkpoint (`keras.callbacks.BackupAndRestore`) and the history
file (`keras.callbacks.CSVLogger(append=True)`); this module adds a time budget, a learning rate
that follows it, the learning rate and epoch seconds in each epoch's logs (so CSVLogger writes
them), throughput, the best inference model, epoch scalars for TensorBoard, and Keras'
CSVLogger made safe for a history file at a URL (`gs://...`).

All of them are safe under `MultiWorkerMirroredStrategy`: a stop decision is agreed by every
worker (a worker that stops alone would leave the others waiting in a collective forever), and
the trainer points non-chief workers' file-writing callbacks at a scratch folder.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Callable

import keras
import tensorflow as tf

from training.schedules import learning_rate_at

log = logging.getLogger(__name__)


def _multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._in_multi_worker_mode())  # pylint: disable=protected-access


def any_worker(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """True if `flag` is true on any worker (a SUM all-reduce); `flag` itself on one machine."""
    if not _multi_worker(strategy):
        return flag
    per_replica = strategy.run(lambda: tf.constant(1.0 if flag else 0.0))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)) > 0.0


def current_lr(optimizer: keras.optimizers.Optimizer) -> float:
    """The learning rate the optimizer applies now (schedules evaluated at its iteration)."""
    lr = optimizer.learning_rate
    if callable(lr):  # a schedule not yet wrapped by the optimizer
        lr = lr(optimizer.iterations)
    return float(keras.ops.convert_to_numpy(lr))


class TimeLimit(keras.callbacks.Callback):
    """Stops training once `budget_seconds` have passed since `start` (monotonic clock).

    Checked after every batch, so the run overshoots by at most one batch plus the epoch's
    validation and checkpoint writing, which still happen: the stopped epoch is validated and
    the best checkpoint kept. `stopped` tells the trainer why fit returned.
    """

    def __init__(self, budget_seconds: float, start: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        if budget_seconds <= 0:
            raise ValueError(f"time budget must be positive, not {budget_seconds}")
        self.budget_seconds = float(budget_seconds)
        self.clock = clock
        self.start = clock() if start is None else start
        self.stopped = False

    def _check(self) -> None:
        spent = self.clock() - self.start >= self.budget_seconds
        if any_worker(self.model.distribute_strategy, spent) and not self.stopped:
            self.stopped = True
            self.model.stop_training = True
            log.info("time limit of %.1f min reached; finishing this epoch's validation and "
                     "checkpoints", self.budget_seconds / 60)

    def on_train_batch_end(self, batch, logs=None):
        self._check()

    def on_epoch_end(self, epoch, logs=None):
        # Also between epochs, so that no new epoch starts once the budget is gone.
        self._check()


class EpochStats(keras.callbacks.Callback):
    """Adds `lr` (the learning rate at the epoch's end) and `seconds` to each epoch's logs.

    Keras hands one logs dict to every callback in turn, so placed first this puts the two
    columns into CSVLogger's history.csv and the TensorBoard scalars.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.clock = clock
        self._epoch_start = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_start = self.clock()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = current_lr(self.model.optimizer)
            logs["seconds"] = round(self.clock() - self._epoch_start, 3)


class BudgetSchedule(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before each batch from the budget spent so far.

    Args:
      peak: the learning rate after warm-up.
      schedule: one of `training.schedules.SCHEDULES`.
      total_steps: optimizer steps the run plans (epochs x steps per epoch).
      budget_seconds: the time limit, or None (then only steps count).
      start: the monotonic time the budget started (the trainer's start, so that set-up and
        validation count, as they do for `callbacks.TimeLimit`).
      warmup, floor: see `learning_rate_at`.
      clock: injectable for tests.
    """

    def __init__(self, peak: float, schedule: str, *, total_steps: int,
                 budget_seconds: float | None = None, start: float | None = None,
                 warmup: float = 0.05, floor: float = 0.01,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        learning_rate_at(0.0, peak, schedule, warmup=warmup, floor=floor)  # validates
        self.peak, self.schedule = float(peak), schedule
        self.total_steps = max(1, int(total_steps))
        self.budget_seconds = budget_seconds
        self.warmup, self.floor = warmup, floor
        self.clock = clock
        self.start = clock() if start is None else start

    def progress(self) -> float:
        """Fraction of the binding budget spent, in [0, 1]."""
        steps = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        done = steps / self.total_steps
        if self.budget_seconds:
            done = max(done, (self.clock() - self.start) / self.budget_seconds)
        return min(done, 1.0)

    def on_train_batch_begin(self, batch, logs=None):
        lr = learning_rate_at(self.progress(), self.peak, self.schedule, warmup=self.warmup,
                              floor=self.floor)
        self.model.optimizer.learning_rate.assign(lr)


class EpochLogger(keras.callbacks.Callback):
    """One INFO line per epoch (its logs, `seconds` and `lr` included, see `EpochStats`), for
    logs that are not a terminal (no progress bar there)."""

    def __init__(self, epochs: int):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        shown = " ".join(f"{k}={_number(v):.4g}" for k, v in sorted((logs or {}).items())
                         if _number(v) is not None)
        log.info("epoch %d/%d %s", epoch + 1, self.epochs, shown)


class EpochTensorBoard(keras.callbacks.Callback):
    """Per-epoch scalars in TensorBoard's layout (`train/`, `validation/`, tags `epoch_*`).

    Written with `tf.summary.write` and the scalars plugin's metadata, which is what
    `keras.callbacks.TensorBoard` produces for epoch scalars, but without needing the
    `tensorboard` package installed to write them (only to view them).
    """

    def __init__(self, log_dir: str | os.PathLike):
        super().__init__()
        self.log_dir = os.fspath(log_dir)  # a string: gs:// and s3:// URLs included
        self._writers: dict[str, Any] = {}
        from tensorflow.core.framework import summary_pb2

        self._metadata = summary_pb2.SummaryMetadata(
            plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"))

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(tf.io.gfile.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        scalars: dict[str, dict[str, float]] = {"train": {}, "validation": {}}
        for key, value in (logs or {}).items():
            number = _number(value)
            if number is None:
                continue
            if key.startswith("val_"):
                scalars["validation"][key[4:]] = number
            else:
                scalars["train"][key] = number
        for name, values in scalars.items():
            if not values:
                continue
            with self._writer(name).as_default():
                for tag, number in values.items():
                    tf.summary.write(f"epoch_{tag}", tf.constant(number, tf.float32),
                                     step=epoch, metadata=self._metadata)
            self._writer(name).flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        number = float(keras.ops.convert_to_numpy(value))
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


class Throughput(keras.callbacks.Callback):
    """Training images per second, counting only the training phase of each epoch.

    Validation, checkpoints and start-up are left out: this is the rate at which the budget
    buys training, the figure to hold against the model's FLOPs.
    """

    def __init__(self, batch_size: int, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.batch_size = batch_size
        self.clock = clock
        self.images = 0
        self.seconds = 0.0
        self._since: float | None = None

    def on_epoch_begin(self, epoch, logs=None):
        self._since = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        self.images += self.batch_size

    def on_test_begin(self, logs=None):
        self._stop()

    def on_epoch_end(self, epoch, logs=None):
        self._stop()

    def _stop(self) -> None:
        if self._since is not None:
            self.seconds += self.clock() - self._since
            self._since = None

    def images_per_second(self) -> float | None:
        return round(self.images / self.seconds, 3) if self.seconds > 0 else None


class BestModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """Keras' `ModelCheckpoint(save_best_only=True)` that saves another model than the one fit.

    The trainer fits a model with auxiliary heads but keeps the inference model (the same
    layers, main head only) as `best.keras`, which evaluation and export load as it is.
    """

    def __init__(self, inference_model: keras.Model, filepath: str | os.PathLike, *,
                 monitor: str, initial_value_threshold: float | None = None):
        super().__init__(str(filepath), monitor=monitor, mode="max", save_best_only=True,
                         initial_value_threshold=initial_value_threshold)
        self._inference_model = inference_model

    def set_model(self, model):
        super().set_model(self._inference_model)


class _RestoreTrainedWeights(keras.callbacks.Callback):
    """Closes the window that `SwapEMAWeights(swap_on_epoch=True)` opens at an epoch's end."""

    def __init__(self, swap: keras.callbacks.SwapEMAWeights):
        super().__init__()
        self._swap = swap

    def on_epoch_end(self, epoch, logs=None):
        # What the swap itself does at the next epoch's start, done now.
        self._swap.on_epoch_begin(epoch, logs)


def with_ema_weights(callbacks: list[keras.callbacks.Callback]) -> list[keras.callbacks.Callback]:
    """`callbacks` with the optimizer's moving average of the weights (`use_ema=True`) in the
    model at each epoch's end: the weights validation scored (Keras' `SwapEMAWeights`).

    Keras' own `swap_on_epoch=True` keeps the average in the model until the next epoch
    begins, so every later callback (`BackupAndRestore` among them) would save the average as
    the trained weights. Here the trained weights are back as soon as `callbacks` are done.
    After the last planned epoch Keras makes the average the trained weights (as `fit` does
    when it ends), so a run resumed for more epochs goes on from the average.
    """
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)
    return [swap, *callbacks, _RestoreTrainedWeights(swap)]


class CSVLogger(keras.callbacks.CSVLogger):
    """Keras' `CSVLogger`, also for a history file at a URL (RUN on gs:// or s3://).

    Keras opens a URL with `tf.io.gfile.GFile`, but its `on_train_end` asks the file
    `.closed`, which GFile lacks (AttributeError at the end of every fit; Keras 3.15). Both
    files' `close()` may be called twice, so closing unconditionally is safe.
    """

    def on_train_end(self, logs=None):
        if self.csv_file is not None:
            self.csv_file.close()
        self.writer = None
