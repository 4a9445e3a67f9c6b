"""CircuitBreaker and Admission on their own: the breaker steps an injected clock, admission is
driven with events, so nothing here sleeps."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

import service.usecases.cancel  # noqa: F401  (names the providers metric labels may hold)
from service.domain.errors import Overloaded, UpstreamUnavailable
from service.infra.resilience import Admission, CircuitBreaker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


def failing(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        breaker.before_call()
        breaker.record(False)


# --- CircuitBreaker --------------------------------------------------------------------------------------


def test_opens_after_threshold_consecutive_failures(clock):
    breaker = CircuitBreaker("openai", threshold=3, open_seconds=10, clock=clock)
    failing(breaker, 2)
    assert breaker.state == "closed"
    failing(breaker, 1)
    assert breaker.state == "open"


def test_a_success_resets_the_failure_count(clock):
    breaker = CircuitBreaker("openai", threshold=2, clock=clock)
    failing(breaker, 1)
    breaker.record(True)
    failing(breaker, 1)
    assert breaker.state == "closed"


def test_open_fails_fast_with_503_and_retry_after(clock):
    breaker = CircuitBreaker("openai", threshold=1, open_seconds=10, clock=clock)
    failing(breaker, 1)
    clock.now += 6.6
    with pytest.raises(UpstreamUnavailable) as info:
        breaker.before_call()
    err = info.value
    assert (err.status_code, err.code, err.provider) == (503, "circuit_open", "openai")
    assert err.headers == {"retry-after": "3"}
    assert "another 3s" in err.message


def test_retry_after_is_at_least_one_second(clock):
    breaker = CircuitBreaker("openai", threshold=1, open_seconds=10, clock=clock)
    failing(breaker, 1)
    clock.now += 9.9
    with pytest.raises(UpstreamUnavailable) as info:
        breaker.before_call()
    assert info.value.headers == {"retry-after": "1"}


def test_after_the_cool_down_exactly_one_probe_goes_through(clock):
    breaker = CircuitBreaker("openai", threshold=1, open_seconds=10, clock=clock)
    failing(breaker, 1)
    clock.now += 10
    assert breaker.state == "half_open"
    breaker.before_call()  # the probe
    for _ in range(3):
        with pytest.raises(UpstreamUnavailable):
            breaker.before_call()


def test_probe_success_closes(clock):
    breaker = CircuitBreaker("openai", threshold=1, open_seconds=10, clock=clock)
    failing(breaker, 1)
    clock.now += 10
    breaker.before_call()
    breaker.record(True)
    assert breaker.state == "closed"
    breaker.before_call()


def test_probe_failure_reopens_for_a_full_period(clock):
    breaker = CircuitBreaker("openai", threshold=5, open_seconds=10, clock=clock)
    failing(breaker, 5)
    clock.now += 10
    breaker.before_call()
    breaker.record(False)  # one failure is enough while probing
    assert breaker.state == "open"
    clock.now += 9.9
    assert breaker.state == "open"
    clock.now += 0.1
    assert breaker.state == "half_open"


def test_unknown_outcome_only_ends_a_probe(clock):
    breaker = CircuitBreaker("openai", threshold=2, open_seconds=10, clock=clock)
    failing(breaker, 1)
    breaker.record(None)  # a timeout: neither healthy nor failed
    failing(breaker, 1)
    assert breaker.state == "open"
    clock.now += 10
    breaker.before_call()
    breaker.record(None)
    assert breaker.state == "half_open"
    breaker.before_call()  # another probe may go


# --- Admission -------------------------------------------------------------------------------------------


def shed() -> float:
    return REGISTRY.get_sample_value("batchgate_admission_rejected_total", {"provider": "openai"}) or 0.0


async def test_admission_bounds_in_flight_and_waiting_calls():
    admission = Admission("openai", concurrency=2, buffer_size=1)
    shed_before = shed()
    release = asyncio.Event()
    entered: list[int] = []

    async def call(n: int) -> None:
        async with admission.slot():
            entered.append(n)
            await release.wait()

    running = [asyncio.create_task(call(n)) for n in range(3)]  # two in flight, one waiting
    for _ in range(5):
        await asyncio.sleep(0)
    assert entered == [0, 1]
    with pytest.raises(Overloaded) as info:
        async with admission.slot():
            pass
    err = info.value
    assert (err.status_code, err.code, err.provider, err.headers) == (429, "overloaded", "openai", {"retry-after": "1"})
    assert shed() == shed_before + 1  # batchgate_admission_rejected_total, what BatchgateRequestsShed reads
    release.set()
    await asyncio.gather(*running)
    assert entered == [0, 1, 2]  # the waiting call ran once a slot freed
    async with admission.slot():  # and everything was given back
        pass


async def test_a_cancelled_waiter_gives_its_place_back():
    admission = Admission("openai", concurrency=1, buffer_size=1)
    release = asyncio.Event()

    async def hold() -> None:
        async with admission.slot():
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    second = asyncio.create_task(hold())  # the buffer has room again
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(holder, second)
