"""Fair share: what one caller may hold in this process at once.

A `Lease` is taken when a call's headers arrive, before its message is read, under the caller's
key (who the caller is, and how it was told, is the edge's business: service.edge.callers), and
given back when the call ends. A call that turns out to be long (CancelMany, or a wait) then takes a
long-call slot and its batches from the same lease. Over any limit the call gets 429
`too_many_concurrent_calls` with `Retry-After` at once; nothing waits for a slot, so a caller that
holds all of its own never delays anyone else's.

The counts are plain integers in dicts: calls start and end on the event loop, one at a time. The
limits themselves (service.config.file.CallLimits) come with each call, so a reload changes them for
the next call while the counts carry on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Callable
from contextvars import ContextVar

from prometheus_client import Counter

from service.config.file import CallLimits
from service.domain.errors import Overloaded

log = logging.getLogger(__name__)

REFUSED = Counter(
    "batchgate_calls_refused",
    "Calls refused because their caller (or the process) held as much as it may at once, by limit",
    ["limit"],
)
for _limit in ("calls_per_caller", "long_calls_per_caller", "batches_per_caller", "batches"):
    REFUSED.labels(_limit)

# The lease of the call running in this task (set by the edge when the call passes its door), for
# the code that learns later that the call is a long one.
current_lease: ContextVar[Lease | None] = ContextVar("batchgate_current_lease", default=None)
# A refused call may try again once another of the caller's calls has ended: soon.
RETRY_AFTER_SECONDS = 1
# At most one log line per this many seconds about refused calls (an attack must not flood the log).
LOG_EVERY_SECONDS = 10.0


class Lease:
    """One call's share: released once, when the call ends (`release`, or `with lease:`)."""

    __slots__ = ("_limiter", "caller", "long", "batches", "_released")

    def __init__(self, limiter: CallLimiter, caller: str) -> None:
        self._limiter, self.caller = limiter, caller
        self.long = False
        self.batches = 0
        self._released = False

    def long_call(self, batches: int, limits: CallLimits) -> None:
        """Makes this a long call holding `batches` batches; raises Overloaded (429) when the caller
        already has as many long calls or batches as it may, or the process as many batches."""
        self._limiter.long_call(self, batches, limits)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._limiter.release(self)

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class CallLimiter:
    """The counts of one process, outliving any one config."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._calls: Tally[str] = Tally()
        self._long: Tally[str] = Tally()
        self._batches: Tally[str] = Tally()
        self.batches = 0  # every caller's together
        self._clock = clock
        self._refused: Tally[str] = Tally()  # since the last log line, by limit
        self._logged_at = -LOG_EVERY_SECONDS
        self._example = ""

    def enter(self, caller: str, limits: CallLimits) -> Lease:
        """A lease for one more call of `caller`; raises Overloaded (429) when it has as many as it
        may (`limits.calls_per_caller`)."""
        if self._calls[caller] >= limits.calls_per_caller:
            self._refuse(
                "calls_per_caller",
                caller,
                f"too many concurrent calls: this caller already has {limits.calls_per_caller} in progress",
            )
        self._calls[caller] += 1
        return Lease(self, caller)

    def long_call(self, lease: Lease, batches: int, limits: CallLimits) -> None:
        caller = lease.caller
        if not lease.long and self._long[caller] >= limits.long_calls_per_caller:
            self._refuse(
                "long_calls_per_caller",
                caller,
                f"too many concurrent calls: this caller already has {limits.long_calls_per_caller} "
                "bulk or waiting calls in progress",
            )
        if self._batches[caller] + batches > limits.batches_per_caller:
            self._refuse(
                "batches_per_caller",
                caller,
                f"too many concurrent calls: this caller's bulk and waiting calls would hold more than "
                f"{limits.batches_per_caller} batches at once",
            )
        if self.batches + batches > limits.batches:
            self._refuse(
                "batches",
                caller,
                "too many concurrent calls: the service holds as many bulk and waiting batches as it may; "
                "try again shortly",
            )
        if not lease.long:
            lease.long = True
            self._long[caller] += 1
        lease.batches += batches
        self._batches[caller] += batches
        self.batches += batches

    def release(self, lease: Lease) -> None:
        caller = lease.caller
        _drop(self._calls, caller, 1)
        if lease.long:
            _drop(self._long, caller, 1)
        if lease.batches:
            _drop(self._batches, caller, lease.batches)
            self.batches -= lease.batches

    def held(self, caller: str) -> tuple[int, int, int]:
        """(calls, long calls, batches) `caller` holds now."""
        return self._calls[caller], self._long[caller], self._batches[caller]

    def _refuse(self, limit: str, caller: str, message: str) -> None:
        REFUSED.labels(limit).inc()
        self._refused[limit] += 1
        self._example = self._example or caller
        now = self._clock()
        if now - self._logged_at >= LOG_EVERY_SECONDS:
            counts = ", ".join(f"{name} {count}" for name, count in sorted(self._refused.items()))
            log.warning(
                "refused calls over the concurrency limits since the last such line: %s (one caller: %s)",
                counts,
                self._example,
            )
            self._logged_at, self._example = now, ""
            self._refused.clear()
        raise Overloaded(message, code="too_many_concurrent_calls", headers={"retry-after": str(RETRY_AFTER_SECONDS)})


def _drop(tally: Tally[str], key: str, amount: int) -> None:
    left = tally[key] - amount
    if left > 0:
        tally[key] = left
    else:
        del tally[key]  # a caller holding nothing takes no room
