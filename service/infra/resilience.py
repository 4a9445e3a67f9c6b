"""Per-provider protection: bounded concurrency with a bounded wait queue, and a circuit breaker
that fails fast while a provider is down and lets one probe through after a cool-down."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

from service.domain.errors import Overloaded, UpstreamUnavailable
from service.infra.observability import count_shed


class Admission:
    """At most `concurrency` cancels in flight per provider and at most `buffer_size` waiting for a
    slot; beyond that a call is refused at once (429) instead of queueing without bound."""

    def __init__(self, provider: str, concurrency: int, buffer_size: int) -> None:
        self.provider = provider
        self._slots = asyncio.Semaphore(concurrency)
        self._buffer_size = buffer_size
        self._waiting = 0

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot now (at most `buffer_size`)."""
        return self._waiting

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        if self._slots.locked() and self._waiting >= self._buffer_size:
            count_shed(self.provider)
            raise Overloaded(
                f"too many cancels in flight for {self.provider}; retry shortly",
                code="overloaded",
                provider=self.provider,
                headers={"retry-after": "1"},
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()


class CircuitBreaker:
    """Opens after `threshold` consecutive failed upstream exchanges (no answer, or 5xx after the
    retries); while open, calls fail fast with 503. After `open_seconds` one probe call goes through: success closes the
    circuit, failure opens it again."""

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"

    def __init__(
        self, provider: str, threshold: int = 5, open_seconds: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.provider = provider
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return self.CLOSED
        if self._probing or self._clock() - self._opened_at >= self.open_seconds:
            return self.HALF_OPEN
        return self.OPEN

    def before_call(self) -> None:
        """Raises when the circuit is open; in half-open state lets exactly one probe through."""
        state, opened_at = self.state, self._opened_at
        if state == self.CLOSED or opened_at is None:
            return
        if state == self.HALF_OPEN and not self._probing:
            self._probing = True
            return
        wait = max(0.0, opened_at + self.open_seconds - self._clock())
        raise UpstreamUnavailable(
            f"{self.provider} is failing; not calling it for another {wait:.0f}s",
            status_code=503,
            code="circuit_open",
            provider=self.provider,
            headers={"retry-after": str(max(1, round(wait)))},
        )

    def record(self, ok: bool | None) -> None:
        """The outcome of one call: True healthy, False failed, None unknown (a timeout or a
        cancelled call: it only ends a probe)."""
        if ok is None:
            self._probing = False
            return
        if ok:
            self._failures, self._opened_at, self._probing = 0, None, False
            return
        self._failures += 1
        if self._probing or self._failures >= self.threshold:
            self._opened_at, self._probing = self._clock(), False
