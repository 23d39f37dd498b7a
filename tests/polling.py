"""Waiting in tests for something another thread or process makes true."""
from __future__ import annotations

import time
from typing import Any, Callable

import pytest


def wait_until(condition: Callable[[], Any], timeout_s: float, interval_s: float = 0.05,
               seen: Callable[[], Any] | None = None) -> None:
    """Call `condition` every `interval_s` until it returns true; fail the test after `timeout_s`.

    `seen`, called on failure, tells what was there instead (a status, a count)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() >= deadline:
            pytest.fail(f"not true within {timeout_s:g} s"
                        + (f"; seen: {seen()!r}" if seen is not None else ""))
        time.sleep(interval_s)
