"""training.schedules (and the callback that applies it): warm-up and decay over the budget
that binds, steps or time."""
import keras
import numpy as np
import pytest

from training.callbacks import BudgetSchedule
from training.schedules import learning_rate_at


@pytest.mark.parametrize("schedule", ["poly", "cosine"])
def test_warmup_then_decay_to_the_floor(schedule):
    peak, floor = 0.1, 0.01
    assert learning_rate_at(0.0, peak, schedule, warmup=0.1, floor=floor) == pytest.approx(0.001)
    assert learning_rate_at(0.05, peak, schedule, warmup=0.1, floor=floor) == pytest.approx(
        0.001 + (0.1 - 0.001) * 0.5)
    assert learning_rate_at(0.1, peak, schedule, warmup=0.1, floor=floor) == pytest.approx(peak)
    values = [learning_rate_at(p, peak, schedule, warmup=0.1, floor=floor)
              for p in np.linspace(0.1, 1.0, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # decays monotonically
    assert values[-1] == pytest.approx(peak * floor)
    assert learning_rate_at(3.0, peak, schedule, warmup=0.1, floor=floor) == pytest.approx(0.001)


def test_constant_and_bad_arguments():
    assert learning_rate_at(0.7, 0.5, "constant") == 0.5
    with pytest.raises(ValueError, match="unknown schedule"):
        learning_rate_at(0.1, 0.5, "step")
    with pytest.raises(ValueError, match="warmup"):
        learning_rate_at(0.1, 0.5, "poly", warmup=1.0)


def _compiled_model():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.AdamW(1.0), loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def test_time_binds_when_it_runs_out_before_the_steps():
    """A run stopped by --time-limit ends with the learning rate at its floor."""
    now = [100.0]
    model = _compiled_model()
    callback = BudgetSchedule(0.01, "poly", total_steps=1_000_000, budget_seconds=60.0,
                              start=100.0, warmup=0.05, clock=lambda: now[0])
    callback.set_model(model)
    seen = []
    for t in (100.0, 101.5, 103.0, 30 + 100.0, 59.9 + 100.0, 60 + 100.0):
        now[0] = t
        callback.on_train_batch_begin(0)
        seen.append(float(model.optimizer.learning_rate.numpy()))
    assert seen[0] == pytest.approx(0.0001)           # warm-up starts at the floor
    assert seen[2] == pytest.approx(0.01, rel=1e-3)   # 5 % of 60 s: the peak
    assert seen[3] < seen[2] and seen[4] < seen[3]
    assert seen[-1] == pytest.approx(0.0001)          # time is up: the floor


def test_steps_bind_without_a_time_limit():
    model = _compiled_model()
    callback = BudgetSchedule(0.01, "cosine", total_steps=10, warmup=0.0)
    callback.set_model(model)
    callback.on_train_batch_begin(0)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    model.optimizer.iterations.assign(10)
    callback.on_train_batch_begin(0)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.0001)
