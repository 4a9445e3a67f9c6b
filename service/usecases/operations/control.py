"""Whether a run goes on: CancelOperation or a revoked key stops it, a shutdown makes this worker
leave it. Its phases check between steps, and sleep through `Control.sleep`, which either ends early."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from service.domain.operations import Failure
from service.infra.timing import Timing
from service.usecases.waiting import sleep_unless

STOPPED_MESSAGE = "cancelled: no cancel was started after CancelOperation; batches not yet cancelled are skipped"


class Stopped(Exception):
    """The operation stops here and ends with `failure`: CancelOperation, or its creator's key was
    revoked."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class Leaving(Exception):
    """This worker shuts down: it leaves the operation as it stands for another to resume."""


def cancelled_failure() -> Failure:
    return Failure(STOPPED_MESSAGE, status_code=499, type="cancelled_error", code="operation_cancelled")


class Control:
    """A run's stop and leave requests, on the run's `timing`."""

    def __init__(self, timing: Timing) -> None:
        self.stopped: Failure | None = None
        self.leaving = False
        self._timing = timing
        self._wake = asyncio.Event()  # set on a stop or a leave: sleeps end early
        self._on_halt: Callable[[], None] | None = None

    @property
    def halted(self) -> bool:
        return self.leaving or self.stopped is not None

    def stop(self, failure: Failure | None = None) -> None:
        """No new cancel starts; the operation ends with `failure` (default: CANCELLED)."""
        if self.stopped is None:
            self.stopped = failure or cancelled_failure()
        self._halt()

    def leave(self) -> None:
        """Graceful shutdown: calls in flight finish, nothing new starts."""
        self.leaving = True
        self._halt()

    def _halt(self) -> None:
        self._wake.set()
        if self._on_halt is not None:
            self._on_halt()

    def check(self) -> None:
        """Raises Leaving or Stopped once asked to."""
        if self.leaving:
            raise Leaving()
        if self.stopped is not None:
            raise Stopped(self.stopped)

    async def sleep(self, seconds: float) -> None:
        """Waits `seconds` of the run's time, or less once halted."""
        if self._timing.sleep is None:
            await sleep_unless(self._wake, seconds)
        elif not self.halted:
            await self._timing.pause(seconds)

    @contextmanager
    def on_halt(self, callback: Callable[[], None]) -> Iterator[None]:
        """Calls `callback` on a stop or a leave while in this block (at once if halted already)."""
        self._on_halt = callback
        try:
            if self.halted:
                callback()
            yield
        finally:
            self._on_halt = None
