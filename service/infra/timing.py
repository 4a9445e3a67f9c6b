"""The time and chance that retry and wait loops run on, injected as one object so that tests step
time instead of waiting (`tests.support.SteppedClock` gives a clock and its sleep)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Timing:
    """`clock` gives the time deadlines are measured in (None: the running event loop's, which is
    what `asyncio.timeout` and the edge's deadlines use), `sleep` waits (None: `asyncio.sleep`, which
    a wait may cut short when the service drains), `rand` gives a float in [0, 1) for jitter, and
    `wall_clock` is unix time (to read HTTP dates such as a Retry-After)."""

    clock: Callable[[], float] | None = None
    sleep: Callable[[float], Awaitable[None]] | None = None
    rand: Callable[[], float] = random.random
    wall_clock: Callable[[], float] = time.time

    def now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    async def pause(self, seconds: float) -> None:
        await (self.sleep or asyncio.sleep)(seconds)


REAL_TIME = Timing()
