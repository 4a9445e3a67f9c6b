"""The shared HTTP executor: one pooled aiohttp session per provider, deadlines and retries.

Retry policy is data (`RetryPolicy`, from the provider's network_config, in the manner of
google-api-core's `retry.Retry`): a cancel only moves a batch forward, so connection errors, 408,
429 and 5xx are retried with exponential backoff and full jitter, `Retry-After` honoured when it
fits the deadline. Two 5xx are not: 501 Not Implemented and 505 HTTP Version Not Supported say the
server will never handle this request, so a retry only repeats the answer. Redirects are never
followed (a redirect must not carry a provider key to another host). Time, randomness and sleeping
are injected, so the policy and the retry loop are unit-tested without waiting.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import aiohttp
from yarl import URL

from service.config.file import NetworkConfig, ProviderConfig
from service.domain.errors import DeadlineExceeded, GatewayError, UpstreamUnavailable
from service.infra.observability import CallRecord, client_span, inject_context
from service.infra.providers.base import UpstreamRequest, UpstreamResponse
from service.infra.resilience import CircuitBreaker
from service.infra.timing import REAL_TIME, Timing

RETRYABLE_STATUSES = frozenset({408, 429, *range(500, 600)} - {501, 505})
MAX_RESPONSE_BYTES = 1 << 20
# A page of a listing holds up to 1,000 batches (Together's list all of them at once).
MAX_LIST_RESPONSE_BYTES = 32 << 20
USER_AGENT = "batchgate/0.1"


def retry_after_seconds(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds from a Retry-After header (delta-seconds, or an HTTP date against `now`, unix time)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def keep_retry_after(error: GatewayError, response: UpstreamResponse) -> GatewayError:
    """`error` (parsed from `response`) with the provider's Retry-After of a 429 or 503, in whole
    seconds, so whoever retries (an operation, a caller) waits as the provider asked."""
    if response.status in (429, 503) and "retry-after" not in error.headers:
        seconds = retry_after_seconds(response.headers.get("Retry-After"))
        if seconds is not None:
            error.headers["retry-after"] = str(max(1, math.ceil(seconds)))
    return error


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Which upstream answers are tried again, how often and after how long. The deadline is the
    call's (given to `HttpExecutor.send`): a wait that would not end before it is not started."""

    # Retries after the first attempt (so at most max_retries + 1 attempts).
    max_retries: int = 2
    # Backoff before retry n (1-based): initial * multiplier ** (n - 1), at most `max_backoff_s`.
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0
    # Full jitter: the wait is uniform in [0, backoff) rather than the backoff itself.
    jitter: bool = True
    # Statuses tried again; an attempt without an answer (connection error) always is.
    statuses: frozenset[int] = RETRYABLE_STATUSES
    # A Retry-After on a retryable answer replaces the backoff (when it fits the deadline).
    honour_retry_after: bool = True

    @classmethod
    def from_network(cls, network: NetworkConfig) -> RetryPolicy:
        return cls(
            max_retries=network.max_retries,
            initial_backoff_s=network.retry_backoff_initial_ms / 1000,
            max_backoff_s=network.retry_backoff_max_ms / 1000,
        )

    def retries(self, attempt: int, status: int | None) -> bool:
        """Whether attempt `attempt` (1-based), answered with `status` (None: no answer), is tried again."""
        return attempt <= self.max_retries and (status is None or status in self.statuses)

    def delay(self, attempt: int, retry_after: float | None, rand: Callable[[], float] = random.random) -> float:
        """Seconds to wait after attempt `attempt` failed; `rand` gives a float in [0, 1)."""
        if retry_after is not None and self.honour_retry_after:
            return retry_after
        backoff = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** (attempt - 1))
        return rand() * backoff if self.jitter else backoff


class HttpExecutor:
    """Sends upstream requests for one provider (`config`: its network settings and concurrency)
    over a pooled session. `timing` is the clock deadlines are measured in (the event loop's by
    default: deadlines are loop time), the sleep between retries, the jitter's randomness and the
    wall clock for Retry-After dates; tests pass a stepped one."""

    def __init__(
        self,
        config: ProviderConfig,
        breaker: CircuitBreaker | None = None,
        retry: RetryPolicy | None = None,
        timing: Timing = REAL_TIME,
    ) -> None:
        self.provider = config.name
        self.network = config.network
        self.breaker = breaker or CircuitBreaker(config.name)
        self.retry = retry or RetryPolicy.from_network(config.network)
        self._timing = timing
        self._concurrency = config.concurrency
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self._concurrency, ttl_dns_cache=300, enable_cleanup_closed=True)
            self._session = aiohttp.ClientSession(
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                # No invented Content-Type on body-less calls; adapters that send a body set theirs.
                skip_auto_headers=("Content-Type",),
                auto_decompress=True,
                raise_for_status=False,
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(
        self, request: UpstreamRequest, deadline: float, record: CallRecord | None = None
    ) -> UpstreamResponse:
        """Sends with retries until an answer that is final or the deadline (loop time) is reached.
        Returns the last answer, whatever its status; raises only when no answer came. The whole
        exchange counts once for the circuit breaker."""
        self.breaker.before_call()
        healthy: bool | None = None  # unknown for timeouts and cancelled calls
        try:
            response = await self._send_with_retries(request, deadline, record)
            healthy = response.status < 500
            return response
        except UpstreamUnavailable:
            healthy = False
            raise
        finally:
            self.breaker.record(healthy)

    async def _send_with_retries(
        self, request: UpstreamRequest, deadline: float, record: CallRecord | None
    ) -> UpstreamResponse:
        timing = self._timing
        policy = self.retry
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - timing.now()
            if remaining <= 0:
                raise DeadlineExceeded(f"{self.provider} did not answer in time", provider=self.provider)
            started = time.perf_counter()
            try:
                with client_span(self.provider, request.method, attempt) as span:
                    inject_context(request.headers)
                    answer = await self._send_once(request, remaining)
                    span.set_attribute("http.response.status_code", answer.status)
            except TimeoutError:  # the attempt had all the remaining time (aiohttp's are subclasses)
                raise DeadlineExceeded(f"{self.provider} did not answer in time", provider=self.provider) from None
            except (aiohttp.ClientError, OSError) as exc:
                if record is not None:
                    record.attempt(self.provider, None, time.perf_counter() - started, request.operation)
                if not policy.retries(attempt, None):
                    raise UpstreamUnavailable(
                        f"could not reach {self.provider}: {type(exc).__name__}", provider=self.provider
                    ) from None
                response: UpstreamResponse | None = None
                retry_after: float | None = None
            else:
                if record is not None:
                    record.attempt(self.provider, answer.status, time.perf_counter() - started, request.operation)
                if not policy.retries(attempt, answer.status):
                    return answer
                response = answer
                retry_after = retry_after_seconds(answer.headers.get("Retry-After"), timing.wall_clock)
            wait = policy.delay(attempt, retry_after, timing.rand)
            if timing.now() + wait >= deadline:
                if response is not None:
                    return response  # no time to wait: the caller gets the provider's answer
                raise DeadlineExceeded(f"{self.provider} did not answer in time", provider=self.provider)
            await timing.pause(wait)

    async def _send_once(self, request: UpstreamRequest, timeout: float) -> UpstreamResponse:
        async with self._get_session().request(
            request.method,
            URL(request.url, encoded=True),
            headers=request.headers,
            data=request.body,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            cap = MAX_LIST_RESPONSE_BYTES if request.operation == "list" else MAX_RESPONSE_BYTES
            if resp.content_length is not None and resp.content_length <= cap:
                body = await resp.read()
            else:
                body = await self._read_capped(resp, cap)
            return UpstreamResponse(resp.status, resp.headers, body)

    async def _read_capped(self, resp: aiohttp.ClientResponse, cap: int) -> bytes:
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > cap:
                raise UpstreamUnavailable(f"{self.provider} answered with an oversized body", provider=self.provider)
            chunks.append(chunk)
        return b"".join(chunks)
