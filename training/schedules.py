"""Learning-rate schedules that follow the training budget: steps, or time when there is a limit.

A schedule sized by epochs never decays in a run that `--time-limit` stops early (a cosine
still above 80 % of its peak when the time ran out, measured before this module). Here the
schedule is a function of *progress* in [0, 1], and progress is the larger of

    steps done / steps planned          and          seconds spent / time limit

so whichever budget binds, the learning rate warms up over the first `warmup` of it, decays
over the rest, and reaches its floor (`floor` times the peak) when the budget is spent.
`BudgetSchedule` sets the optimizer's learning rate before every batch.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Callable

import keras

log = logging.getLogger("cityseg.train")

SCHEDULES = ("constant", "cosine", "poly")
POLY_POWER = 0.9  # PSPNet/DeepLab's "poly" policy


def learning_rate_at(progress: float, peak: float, schedule: str = "poly", *,
                     warmup: float = 0.05, floor: float = 0.01) -> float:
    """The learning rate at `progress` (0: start, 1: budget spent).

    Linear warm-up from `floor * peak` to `peak` over the first `warmup` of the budget, then
    the schedule's decay from `peak` down to `floor * peak` at progress 1 (held after).

    Raises:
      ValueError: for an unknown schedule or fractions outside [0, 1).
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r} (choose from {', '.join(SCHEDULES)})")
    if not 0.0 <= warmup < 1.0 or not 0.0 <= floor <= 1.0:
        raise ValueError(f"warmup must be in [0, 1) and floor in [0, 1], not {warmup}, {floor}")
    if schedule == "constant":
        return peak
    progress = min(max(progress, 0.0), 1.0)
    low = floor * peak
    if progress < warmup:
        return low + (peak - low) * progress / warmup
    decay = (progress - warmup) / (1.0 - warmup)
    if schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * decay))
    else:
        factor = (1.0 - decay) ** POLY_POWER
    return low + (peak - low) * factor


class BudgetSchedule(keras.callbacks.Callback):
    """Sets the optimizer's learning rate before each batch from the budget spent so far.

    Args:
      peak: the learning rate after warm-up.
      schedule: one of SCHEDULES.
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
