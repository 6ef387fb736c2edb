"""Waiting on a condition with a deadline: how tests, benchmarks and the local stack synchronise with
servers they start (never a fixed sleep)."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition did not hold in time. An AssertionError, so a test that waited reads as failed, not
    errored; the message names what was awaited and for how long."""


def wait_for(predicate: Callable[[], T], timeout_s: float = 120.0, interval_s: float = 0.2,
             what: str = "condition") -> T:
    """Call `predicate` every `interval_s` until it returns something truthy, and return that value (an
    array, whose truth is ambiguous, counts as an answer)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if _holds(value):
            return value
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"{what} not met within {timeout_s:.0f} s")
        time.sleep(interval_s)


def _holds(value: object) -> bool:
    try:
        return bool(value)
    except ValueError:  # numpy arrays and the like: it returned a value, which is what was awaited
        return True
