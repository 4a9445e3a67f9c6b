"""The batches an operation still has to cancel, handed out to a fixed number of workers.

A batch whose cancel failed in a way that retrying can fix comes back after its backoff; a provider
that answered 429 with Retry-After is paused for this operation until then (no batch of it is handed
out meanwhile, so its limit is not hammered), while the other providers' batches go on. Providers
take turns, so one slow provider does not hold up the others. The time it runs on is injected (the
operation's: tests step it, and a wait for a retry or a pause then moves their clock).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Iterable
from typing import Generic, TypeVar

from service.infra.timing import Timing

T = TypeVar("T")


class WorkQueue(Generic[T]):
    """Items keyed by provider. `take()` gives the next item that may go now, waiting while every
    remaining one waits for its retry time or its provider's pause, and None once nothing is left
    to hand out and nothing handed out may come back (`done(item)` or `retry(item, delay)` is
    called for every item taken)."""

    def __init__(self, items: Iterable[tuple[str, T]], timing: Timing) -> None:
        self._timing = timing
        self._clock = timing.now
        self._ready: dict[str, deque[T]] = {}
        for provider, item in items:
            self._ready.setdefault(provider, deque()).append(item)
        self._turns = deque(self._ready)
        self._later: list[tuple[float, int, str, T]] = []
        self._seq = itertools.count()
        self._paused: dict[str, float] = {}
        self._out = 0
        self._changed = asyncio.Event()
        self.closed = False

    def __len__(self) -> int:
        """Items not yet settled: waiting to go, waiting to retry, or out with a worker."""
        return sum(map(len, self._ready.values())) + len(self._later) + self._out

    def pause(self, provider: str, seconds: float) -> None:
        """No item of `provider` is handed out for `seconds` (a Retry-After)."""
        until = self._clock() + seconds
        if until > self._paused.get(provider, 0.0):
            self._paused[provider] = until
            self._changed.set()

    def retry(self, provider: str, item: T, delay: float) -> None:
        """`item` (taken before) goes again after `delay` seconds."""
        self._out -= 1
        heapq.heappush(self._later, (self._clock() + delay, next(self._seq), provider, item))
        self._changed.set()

    def done(self) -> None:
        """An item taken before is settled."""
        self._out -= 1
        self._changed.set()

    def close(self) -> None:
        """Nothing more is handed out (the operation stops): waiting `take`s answer None."""
        self.closed = True
        self._changed.set()

    def drain(self) -> list[T]:
        """Every item not handed out (those waiting to go or to retry), leaving the queue empty."""
        items = [item for queue in self._ready.values() for item in queue]
        items += [entry[3] for entry in self._later]
        self._ready.clear()
        self._later.clear()
        self._turns.clear()
        return items

    async def take(self) -> tuple[str, T] | None:
        while not self.closed:
            now = self._clock()
            while self._later and self._later[0][0] <= now:
                _, _, provider, item = heapq.heappop(self._later)
                if provider not in self._ready:
                    self._turns.append(provider)
                self._ready.setdefault(provider, deque()).append(item)
            picked = self._pick(now)
            if picked is not None:
                self._out += 1
                return picked
            if not self._ready and not self._later and not self._out:
                return None
            wake = [t for p, t in self._paused.items() if p in self._ready and t > now]
            if self._later:
                wake.append(self._later[0][0])
            self._changed.clear()
            await self._wait(max(0.0, min(wake) - now) if wake else None)
        return None

    async def _wait(self, timeout: float | None) -> None:
        """Until something changes, or `timeout` seconds (None: no limit) of the queue's time."""
        if timeout is None or self._timing.sleep is None:
            try:
                await asyncio.wait_for(self._changed.wait(), timeout)
            except TimeoutError:
                pass
            return
        changed = asyncio.ensure_future(self._changed.wait())
        slept = asyncio.ensure_future(self._timing.pause(timeout))
        await asyncio.wait((changed, slept), return_when=asyncio.FIRST_COMPLETED)
        for task in (changed, slept):
            task.cancel()
        await asyncio.gather(changed, slept, return_exceptions=True)

    def _pick(self, now: float) -> tuple[str, T] | None:
        for _ in range(len(self._turns)):
            provider = self._turns[0]
            self._turns.rotate(-1)
            queue = self._ready.get(provider)
            if not queue:
                self._ready.pop(provider, None)
                self._turns.remove(provider)
                continue
            if self._paused.get(provider, 0.0) > now:
                continue
            item = queue.popleft()
            if not queue:
                del self._ready[provider]
                self._turns.remove(provider)
            return provider, item
        return None
