"""The upstream retry policy as data, and the executor's retry loop, with time, randomness and
sleeping injected: no test here waits."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import aiohttp
import pytest

from service.config.file import NetworkConfig, ProviderConfig
from service.domain.errors import DeadlineExceeded, UpstreamUnavailable
from service.infra.observability import CallRecord
from service.infra.providers.base import UpstreamRequest, UpstreamResponse
from service.infra.providers.http import RETRYABLE_STATUSES, HttpExecutor, RetryPolicy, retry_after_seconds
from service.infra.resilience import CircuitBreaker
from service.infra.timing import Timing
from tests.support import SteppedClock

# --- retry_after_seconds -----------------------------------------------------------------------------

NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        ("3", 3.0),
        ("1.5", 1.5),
        ("-4", 0.0),
        ("soon", None),
        (format_datetime(datetime.fromtimestamp(NOW + 20, UTC), usegmt=True), 20.0),
        (format_datetime(datetime.fromtimestamp(NOW - 20, UTC), usegmt=True), 0.0),
        ("Wed, 99 Foo 2026 00:00:00 GMT", None),
    ],
)
def test_retry_after_seconds(value, seconds):
    assert retry_after_seconds(value, now=lambda: NOW) == seconds


# --- RetryPolicy ---------------------------------------------------------------------------------------


def test_policy_from_network_config():
    policy = RetryPolicy.from_network(
        NetworkConfig(max_retries=4, retry_backoff_initial_ms=50, retry_backoff_max_ms=300)
    )
    assert (policy.max_retries, policy.initial_backoff_s, policy.max_backoff_s) == (4, 0.05, 0.3)
    assert RetryPolicy.from_network(NetworkConfig()) == RetryPolicy()  # the defaults agree


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 529])
def test_transient_statuses_retry_until_the_attempts_are_used(status):
    policy = RetryPolicy(max_retries=2)
    assert [policy.retries(attempt, status) for attempt in (1, 2, 3)] == [True, True, False]


@pytest.mark.parametrize("status", [200, 201, 400, 401, 403, 404, 409, 422, 501, 505])
def test_final_statuses_never_retry(status):
    assert not RetryPolicy(max_retries=5).retries(1, status)
    assert status not in RETRYABLE_STATUSES or status < 300


def test_no_answer_retries_like_a_transient_status():
    policy = RetryPolicy(max_retries=1)
    assert policy.retries(1, None) and not policy.retries(2, None)
    assert not RetryPolicy(max_retries=0).retries(1, None)


def test_backoff_grows_to_its_cap_with_full_jitter():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=0.5, multiplier=2)
    top = [policy.delay(attempt, None, rand=lambda: 0.999999) for attempt in range(1, 6)]
    assert top == pytest.approx([0.1, 0.2, 0.4, 0.5, 0.5], rel=1e-5)
    assert policy.delay(3, None, rand=lambda: 0.0) == 0.0
    assert policy.delay(3, None, rand=lambda: 0.5) == pytest.approx(0.2)


def test_backoff_without_jitter_is_the_backoff_itself():
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1, jitter=False)
    assert [policy.delay(n, None) for n in (1, 2, 3)] == pytest.approx([0.1, 0.2, 0.4])


def test_retry_after_replaces_the_backoff_unless_told_not_to():
    assert RetryPolicy(max_backoff_s=0.5).delay(1, 7.0, rand=lambda: 0.5) == 7.0
    assert RetryPolicy(honour_retry_after=False).delay(1, 7.0, rand=lambda: 0.5) == pytest.approx(0.05)


def test_policy_is_immutable_data():
    policy = RetryPolicy()
    with pytest.raises(AttributeError):
        policy.max_retries = 9  # type: ignore[misc]
    assert policy == RetryPolicy() and hash(policy) == hash(RetryPolicy())


# --- the executor's loop -------------------------------------------------------------------------------


class ScriptedExecutor(HttpExecutor):
    """The real loop over scripted exchanges: each item is an UpstreamResponse to answer with or an
    exception to raise (instead of a network round trip)."""

    def __init__(self, script, policy: RetryPolicy, clock: SteppedClock, rand=lambda: 0.5, breaker=None) -> None:
        timing = Timing(clock=clock, sleep=clock.sleep, rand=rand, wall_clock=lambda: NOW)
        super().__init__(ProviderConfig("openai", (), concurrency=4), breaker, policy, timing)
        self.script = list(script)
        self.sent = 0

    async def _send_once(self, request, timeout):
        self.sent += 1
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step


def answer(status: int, **headers) -> UpstreamResponse:
    return UpstreamResponse(status, {k.replace("_", "-"): v for k, v in headers.items()}, b"{}")


REQUEST = UpstreamRequest("POST", "http://upstream.invalid/v1/batches/b/cancel", {})


async def test_transient_answers_are_retried_with_backoff_then_succeed():
    clock = SteppedClock(100.0)
    executor = ScriptedExecutor([answer(503), answer(429), answer(200)], RetryPolicy(max_retries=2), clock)
    record = CallRecord("rid", "grpc")
    response = await executor.send(REQUEST, deadline=clock.now + 30, record=record)
    assert response.status == 200 and executor.sent == 3
    assert clock.sleeps == pytest.approx([0.05, 0.1])  # rand 0.5 of 0.1 and 0.2
    assert (record.attempts, record.upstream_status) == (3, 200)


async def test_exhausted_retries_return_the_last_answer():
    clock = SteppedClock(100.0)
    executor = ScriptedExecutor([answer(500)] * 3, RetryPolicy(max_retries=2), clock)
    assert (await executor.send(REQUEST, deadline=clock.now + 30)).status == 500
    assert executor.sent == 3 and len(clock.sleeps) == 2


async def test_connection_errors_exhausted_are_unavailable():
    clock = SteppedClock(100.0)
    executor = ScriptedExecutor([aiohttp.ClientConnectionError()] * 2, RetryPolicy(max_retries=1), clock)
    with pytest.raises(UpstreamUnavailable, match="could not reach openai: ClientConnectionError"):
        await executor.send(REQUEST, deadline=clock.now + 30)
    assert executor.sent == 2


async def test_retry_after_is_waited_when_it_fits_the_deadline():
    clock = SteppedClock(100.0)
    executor = ScriptedExecutor([answer(429, Retry_After="2"), answer(200)], RetryPolicy(), clock)
    assert (await executor.send(REQUEST, deadline=clock.now + 3)).status == 200
    assert clock.sleeps == [2.0]


async def test_a_wait_past_the_deadline_is_not_started():
    clock = SteppedClock(100.0)
    executor = ScriptedExecutor([answer(429, Retry_After="30")], RetryPolicy(), clock)
    assert (await executor.send(REQUEST, deadline=clock.now + 3)).status == 429  # the provider's answer
    assert clock.sleeps == [] and executor.sent == 1


async def test_no_answer_and_no_time_left_is_deadline_exceeded():
    clock = SteppedClock(100.0)
    executor = ScriptedExecutor(
        [aiohttp.ServerDisconnectedError()], RetryPolicy(initial_backoff_s=5), clock, rand=lambda: 0.9
    )
    with pytest.raises(DeadlineExceeded):
        await executor.send(REQUEST, deadline=clock.now + 1)
    with pytest.raises(DeadlineExceeded):  # nothing is sent once the deadline passed
        await ScriptedExecutor([], RetryPolicy(), clock).send(REQUEST, deadline=clock.now)


async def test_the_whole_exchange_counts_once_for_the_breaker():
    clock = SteppedClock(100.0)
    breaker = CircuitBreaker("openai", threshold=2, clock=clock)
    for _ in range(2):
        executor = ScriptedExecutor([answer(502)] * 3, RetryPolicy(max_retries=2), clock, breaker=breaker)
        await executor.send(REQUEST, deadline=clock.now + 30)
    assert breaker.state == "open"
    with pytest.raises(UpstreamUnavailable, match="is failing"):
        await ScriptedExecutor([], RetryPolicy(), clock, breaker=breaker).send(REQUEST, deadline=clock.now + 30)
