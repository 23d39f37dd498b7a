"""Learning-rate schedules that follow the training budget: steps, or time when there is a limit.

A schedule sized by epochs never decays in a run that `--time-limit` stops early (a cosine
still above 80 % of its peak when the time ran out, measured before this module). Here the
schedule is a function of *progress* in [0, 1], and progress is the larger of

    steps done / steps planned          and          seconds spent / time limit

so whichever budget binds, the learning rate warms up over the first `warmup` of it, decays
over the rest, and reaches its floor (`floor` times the peak) when the budget is spent.
`training.callbacks.BudgetSchedule` sets the optimizer's learning rate before every batch.
Plain Python: the trainer's flags read `SCHEDULES` without loading TensorFlow.
"""
from __future__ import annotations

import math

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
