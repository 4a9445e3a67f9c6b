"""The shared HTTP executor: one pooled aiohttp session per provider, deadlines and retries.

Retry policy is data (`RETRYABLE_STATUSES`, backoff from the provider's network_config): a cancel
only moves a batch forward, so connection errors, 408, 429 and 5xx are retried with exponential
backoff and full jitter, `Retry-After` honoured when it fits the deadline. Two 5xx are not: 501 Not
Implemented and 505 HTTP Version Not Supported say the server will never handle this request, so a
retry only repeats the answer. Redirects are never
followed (a redirect must not carry a provider key to another host).
"""

from __future__ import annotations

import asyncio
import random
import time
from email.utils import parsedate_to_datetime

import aiohttp
from yarl import URL

from service.config import NetworkConfig
from service.errors import DeadlineExceeded, UpstreamUnavailable
from service.observability import Trace, client_span, inject_context
from service.providers.base import UpstreamRequest, UpstreamResponse
from service.resilience import CircuitBreaker

RETRYABLE_STATUSES = frozenset({408, 429, *range(500, 600)} - {501, 505})
MAX_RESPONSE_BYTES = 1 << 20
USER_AGENT = "batchgate/0.1"


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


class HttpExecutor:
    """Sends upstream requests for one provider over a pooled session."""

    def __init__(
        self, provider: str, network: NetworkConfig, concurrency: int, breaker: CircuitBreaker | None = None
    ) -> None:
        self.provider = provider
        self.network = network
        self.breaker = breaker or CircuitBreaker(provider)
        self._concurrency = concurrency
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

    async def send(self, request: UpstreamRequest, deadline: float, trace: Trace | None = None) -> UpstreamResponse:
        """Sends with retries until an answer that is final or the deadline (loop time) is reached.
        Returns the last answer, whatever its status; raises only when no answer came. The whole
        exchange counts once for the circuit breaker."""
        self.breaker.before_call()
        healthy: bool | None = None  # unknown for timeouts and cancelled calls
        try:
            response = await self._send_with_retries(request, deadline, trace)
            healthy = response.status < 500
            return response
        except UpstreamUnavailable:
            healthy = False
            raise
        finally:
            self.breaker.record(healthy)

    async def _send_with_retries(
        self, request: UpstreamRequest, deadline: float, trace: Trace | None
    ) -> UpstreamResponse:
        loop = asyncio.get_running_loop()
        net = self.network
        attempt = 0
        while True:
            attempt += 1
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(f"{self.provider} did not answer in time", provider=self.provider)
            started = time.perf_counter()
            try:
                with client_span(self.provider, request.method, attempt) as span:
                    inject_context(request.headers)
                    response = await self._send_once(request, remaining)
                    span.set_attribute("http.response.status_code", response.status)
            except TimeoutError:  # the attempt had all the remaining time (aiohttp's are subclasses)
                raise DeadlineExceeded(f"{self.provider} did not answer in time", provider=self.provider) from None
            except (aiohttp.ClientError, OSError) as exc:
                if trace is not None:
                    trace.attempt(self.provider, None, time.perf_counter() - started, request.operation)
                if attempt > net.max_retries:
                    raise UpstreamUnavailable(
                        f"could not reach {self.provider}: {type(exc).__name__}", provider=self.provider
                    ) from None
                response, wait = None, None
            else:
                if trace is not None:
                    trace.attempt(self.provider, response.status, time.perf_counter() - started, request.operation)
                if response.status not in RETRYABLE_STATUSES or attempt > net.max_retries:
                    return response
                wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait is None:
                cap = min(net.retry_backoff_max_ms, net.retry_backoff_initial_ms * 2 ** (attempt - 1))
                wait = random.uniform(0, cap) / 1000
            if loop.time() + wait >= deadline:
                if response is not None:
                    return response  # no time to wait: the caller gets the provider's answer
                raise DeadlineExceeded(f"{self.provider} did not answer in time", provider=self.provider)
            await asyncio.sleep(wait)

    async def _send_once(self, request: UpstreamRequest, timeout: float) -> UpstreamResponse:
        async with self._get_session().request(
            request.method,
            URL(request.url, encoded=True),
            headers=request.headers,
            data=request.body,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            if resp.content_length is not None and resp.content_length <= MAX_RESPONSE_BYTES:
                body = await resp.read()
            else:
                body = await self._read_capped(resp)
            return UpstreamResponse(resp.status, resp.headers, body)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> bytes:
        chunks, size = [], 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > MAX_RESPONSE_BYTES:
                raise UpstreamUnavailable(f"{self.provider} answered with an oversized body", provider=self.provider)
            chunks.append(chunk)
        return b"".join(chunks)
