from __future__ import annotations

import pytest

from eventlab.resilience import CircuitBreaker, CircuitOpen, retry


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def boom():
    raise ConnectionError("down")


@pytest.fixture
def half_open():
    """A breaker that opened at its first failure, and whose time to let a trial call through has come."""
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_after=5, clock=clock)
    with pytest.raises(ConnectionError):
        breaker.call(boom)
    clock.now = 5
    return breaker


def test_breaker_opens_after_threshold_then_half_opens_and_closes():
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_after=10, clock=clock)
    for _ in range(2):
        with pytest.raises(ConnectionError):
            breaker.call(boom)
    assert breaker.state == "open"
    with pytest.raises(CircuitOpen):
        breaker.call(lambda: "not called")
    clock.now = 10
    assert breaker.state == "half-open"
    assert breaker.call(lambda: "ok") == "ok"
    assert breaker.state == "closed"


def test_a_failed_trial_call_opens_the_breaker_again(half_open):
    with pytest.raises(ConnectionError):
        half_open.call(boom)
    assert half_open.state == "open"


def test_half_open_lets_one_trial_call_through_and_fails_the_others_fast(half_open):
    refused = []

    def trial():  # while it runs, other callers (here: from inside it) are refused without a call
        for _ in range(3):
            with pytest.raises(CircuitOpen):
                half_open.call(lambda: refused.append("called"))
            refused.append("refused")
        return "ok"

    assert half_open.call(trial) == "ok" and refused == ["refused"] * 3
    assert half_open.state == "closed" and half_open.call(lambda: "next") == "next"


def test_a_trial_ended_by_an_interrupt_lets_the_next_trial_through(half_open):

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        half_open.call(interrupted)
    assert half_open.state == "half-open" and half_open.call(lambda: "ok") == "ok"


def test_retry_backs_off_exponentially_and_gives_up():
    delays = []
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError
        return "done"

    assert retry(flaky, retry_on=(ConnectionError,), attempts=3, base_delay=0.1, sleep=delays.append) == "done"
    assert delays == [0.1, 0.2]
    with pytest.raises(ConnectionError):
        retry(boom, retry_on=(ConnectionError,), attempts=2, base_delay=0.1, sleep=delays.append)


def test_retry_does_not_retry_other_errors():
    calls = []

    def wrong():
        calls.append(1)
        raise ValueError

    with pytest.raises(ValueError):
        retry(wrong, retry_on=(ConnectionError,), sleep=lambda _: None)
    assert len(calls) == 1
