"""Waiting for a cancel to take effect: reading the batch back until its status is terminal.

A cancelled batch often stays `cancelling` for minutes (OpenAI up to 10, Bedrock `Stopping`, Vertex
`JOB_STATE_CANCELLING`). Reads start 1 s after the cancel and back off to at most 30 s apart, with
jitter so a bulk call's items do not read in lockstep, and never sooner than a `Retry-After` asks.
The policy is data and the clock, sleep and randomness are injected, so tests step time.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from service.domain.errors import GatewayError
from service.domain.model import TERMINAL_STATUSES, BatchState, CancelCommand, CancelResult
from service.infra.providers.http import RETRYABLE_STATUSES, retry_after_seconds
from service.usecases.context import CallContext

# Time kept back from the call's own deadline so the last state still reaches the caller.
ANSWER_MARGIN_S = 1.0


@dataclass(frozen=True, slots=True)
class PollPolicy:
    """When to read a batch back: first after `first_s`, then each gap `multiplier` times the last
    up to `max_s`, shortened by up to `jitter` (a fraction) at random."""

    first_s: float = 1.0
    max_s: float = 30.0
    multiplier: float = 2.0
    jitter: float = 0.2

    def next_delay(self, previous: float, rand: Callable[[], float] = random.random) -> float:
        base = min(self.max_s, previous * self.multiplier)
        return base * (1 - self.jitter * rand())


class Alarm:
    """What ends a wait's sleep early, one per process (every config's canceller shares it): the
    service draining (`stopping`, for good: waits answer with what they know) and a config reload
    (a `pulse`: a caller may have lost its access, so every sleeping wait checks, then sleeps on)."""

    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._pulse = asyncio.Event()

    def stop(self) -> None:
        self.stopping.set()
        self.pulse()

    def pulse(self) -> None:
        pulse, self._pulse = self._pulse, asyncio.Event()
        pulse.set()

    async def sleep(self, seconds: float) -> None:
        """Sleeps `seconds`, or less if the service drains or a pulse comes meanwhile."""
        if not self.stopping.is_set():
            await sleep_unless(self._pulse, seconds)


async def sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    """Sleeps `seconds`, or less if `stop` is set meanwhile."""
    if stop.is_set():
        return
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


class Reader(Protocol):
    """What waiting needs of the use case (service.usecases.cancel.Canceller, which imports this module):
    reading a batch back, the poll policy, and the process's alarm (drain, reloads)."""

    poll_policy: PollPolicy
    alarm: Alarm

    async def read(
        self, handle: Any, command: CancelCommand, call: CallContext, call_end: float | None
    ) -> tuple[BatchState, Any]: ...


@dataclass(slots=True)
class Step:
    """One observed state of a waited-for batch; `final` on the last one."""

    state: BatchState
    final: bool
    warning: str | None = None
    raw: Any = None


def wait_end(wait_seconds: float, call_end: float | None, now: float) -> float:
    """Loop time at which waiting stops: after `wait_seconds`, or a margin before the call's deadline."""
    end = now + wait_seconds
    if call_end is not None:
        end = min(end, call_end - min(ANSWER_MARGIN_S, max(0.0, call_end - now) / 10))
    return end


SHUTTING_DOWN = "waiting ended early: the service is shutting down"


async def watch(
    read: Callable[[], Awaitable[tuple[BatchState, Any]]],
    state: BatchState,
    until: float,
    policy: PollPolicy | None = None,
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    rand: Callable[[], float] = random.random,
    stop: asyncio.Event | None = None,
    check: Callable[[], float | None] | None = None,
) -> AsyncIterator[Step]:
    """Reads the batch back until its status is terminal or `until` (loop time) passes, yielding a
    step each time the status changes; the last step is `final`, with a warning when the batch is
    still not terminal. A read that fails is retried later when it may succeed (429, 5xx, no
    answer); any other failure ends the wait with the last known state. `stop` (the service is
    shutting down) ends the wait early, so the caller still gets a final answer in the grace time.
    `check` (the caller may still do this: service.usecases.auth.CallerCheck) runs before every
    read and whenever `sleep` returns early; its error (401/403) ends the wait, raised. It returns
    the seconds until the caller's key expires, and the wait wakes then to check again."""
    clock = clock or asyncio.get_running_loop().time
    policy = policy or PollPolicy()
    delay = policy.first_s
    problem: str | None = None
    raw: Any = None
    while state.status not in TERMINAL_STATUSES:
        now = clock()
        if now >= until:
            break
        wake = now + min(delay, until - now)
        while True:  # `sleep` may return early (a reload, the drain): check, then sleep on
            expires_in = check() if check is not None else None
            left = wake - clock()
            if left <= 0 or (stop is not None and stop.is_set()):
                break
            await sleep(left if expires_in is None else min(left, expires_in + 0.001))
        if stop is not None and stop.is_set():
            problem = SHUTTING_DOWN
            break
        pause = policy.next_delay(delay, rand)
        try:
            new_state, raw = await read()
        except GatewayError as err:
            problem = f"reading the batch failed: {err.message}"
            if err.status_code not in RETRYABLE_STATUSES and err.status_code < 500:
                break
            pause = max(pause, retry_after_seconds(err.headers.get("retry-after")) or 0.0)
        else:
            problem = None
            changed = new_state.status != state.status
            state = new_state
            if changed and state.status not in TERMINAL_STATUSES:
                yield Step(state, final=False, raw=raw)
        delay = pause
    if state.status in TERMINAL_STATUSES:
        yield Step(state, final=True, raw=raw)
        return
    warning = f"the batch is still {state.status or 'not terminal'} after waiting"
    if problem:
        warning = f"{warning}; {problem}"
    yield Step(state, final=True, warning=warning, raw=raw)


def waited_result(result: CancelResult, step: Step, send_raw: bool) -> CancelResult:
    """The cancel's result updated to a later observed state."""
    raw = result.raw_response
    if send_raw and step.raw is not None:
        cancel_raw = raw.get("cancel") if isinstance(raw, dict) and "retrieve" in raw else raw
        raw = {"cancel": cancel_raw, "retrieve": step.raw}
    return replace(result, batch=step.state, raw_response=raw, warning=step.warning or result.warning)


async def watch_result(
    canceller: Reader,
    result: CancelResult,
    command: CancelCommand,
    call: CallContext,
    call_end: float | None,
    gate: Callable[[], Any] | None = None,
) -> AsyncIterator[tuple[CancelResult, bool]]:
    """The cancel's result after each status change while waiting `command.wait_seconds`, each with
    whether it is the last. `gate` (an async context manager factory) wraps each read, e.g. a bulk
    call's bound on upstream calls in flight."""
    loop = asyncio.get_running_loop()
    until = wait_end(command.wait_seconds, call_end, loop.time())
    send_raw = result.raw_response is not None

    async def read() -> tuple[BatchState, Any]:
        if gate is None:
            return await canceller.read(result.read_back, command, call, call_end)
        async with gate():
            return await canceller.read(result.read_back, command, call, call_end)

    if result.read_back is None:  # nothing to read back with (cannot happen after a successful cancel)
        yield result, True
        return
    alarm = canceller.alarm
    access = call.access
    check = None if access is None else functools.partial(access.check, result.provider)
    steps = watch(read, result.batch, until, canceller.poll_policy, sleep=alarm.sleep, stop=alarm.stopping, check=check)
    async for step in steps:
        yield waited_result(result, step, send_raw), step.final


async def wait_for_terminal(
    canceller: Reader,
    result: CancelResult,
    command: CancelCommand,
    call: CallContext,
    call_end: float | None,
) -> CancelResult:
    """A single cancel's wait: the last state once terminal or once the wait runs out."""
    last = result
    async for state, _final in watch_result(canceller, result, command, call, call_end):
        last = state
    return last
