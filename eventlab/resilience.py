"""Calls to flaky dependencies and waits for slow ones: retries with exponential backoff, a circuit
breaker, and :func:`wait_until`, the one polling wait.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal, TypeVar

from eventlab.errors import EventlabError

__all__ = ["CircuitBreaker", "CircuitOpen", "retry", "wait_until"]

T = TypeVar("T")


class CircuitOpen(EventlabError):
    """The circuit breaker is open: the dependency is presumed down, calls fail fast."""


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_after`` s lets one
    trial call through (half-open; other callers fail fast meanwhile) and closes again if it succeeds.

    Example:
        >>> breaker = CircuitBreaker(failure_threshold=2, reset_after=30)
        >>> breaker.state
        'closed'
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_after: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._trial = False  # a half-open trial call is running
        self._lock = threading.Lock()

    @property
    def state(self) -> Literal["closed", "open", "half-open"]:
        if self._opened_at is None:
            return "closed"
        return "half-open" if self._clock() - self._opened_at >= self.reset_after else "open"

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.state} failures={self._failures}/{self.failure_threshold}>"

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` through the breaker; raise :class:`CircuitOpen` without calling it when open."""
        with self._lock:
            state = self.state
            if state == "open" or (state == "half-open" and self._trial):
                raise CircuitOpen("circuit open: dependency presumed down")
            trial = self._trial = state == "half-open"
        try:
            result = fn()
        except Exception:
            with self._lock:
                self._failures += 1
                if self._failures >= self.failure_threshold or self._opened_at is not None:
                    self._opened_at = self._clock()
            raise
        finally:
            if trial:
                with self._lock:
                    self._trial = False
        with self._lock:
            self._failures = 0
            self._opened_at = None
        return result


def retry(
    fn: Callable[[], T],
    *,
    retry_on: tuple[type[BaseException], ...],
    attempts: int = 3,
    base_delay: float = 0.02,
    max_delay: float = 1.0,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn``; on ``retry_on`` errors wait ``base_delay * 2**n`` (capped) and try again."""
    for attempt in range(attempts):
        try:
            return fn()
        except retry_on:
            if attempt == attempts - 1:
                raise
            sleep(min(base_delay * 2**attempt, max_delay))
    raise AssertionError("unreachable")


def wait_until(
    probe: Callable[[], T],
    timeout: float,
    *,
    until: Callable[[T], object] = bool,
    interval: float = 0.05,
    timeout_error: Callable[[T], BaseException] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> T:
    """Call ``probe`` every ``interval`` s until ``until(result)`` holds and return that result.

    After ``timeout`` s raise ``timeout_error(last result)`` (default :class:`TimeoutError`).

    Example:
        >>> answers = iter([0, 0, 3])
        >>> wait_until(lambda: next(answers), timeout=1, interval=0)
        3
    """
    deadline = clock() + timeout
    while True:
        result = probe()
        if until(result):
            return result
        if clock() > deadline:
            raise (timeout_error or _timed_out(timeout))(result)
        sleep(interval)


def _timed_out(timeout: float) -> Callable[[object], BaseException]:
    return lambda last: TimeoutError(f"still {last!r} after {timeout} s")
