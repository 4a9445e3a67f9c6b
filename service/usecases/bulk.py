"""Cancel many and wait: one call cancels up to 1,000 batches across providers and reports each
one's state as it happens.

Each distinct (id, provider) is cancelled once, like a single cancel (same checks, admission,
breaker, retries), with at most `client.bulk_concurrency` upstream calls of this call in flight;
its events are reported at every index it appears at. With a wait, each batch is then read back
until terminal (service.usecases.waiting). Events come out in the order they happen.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field, replace

from service.domain.errors import GatewayError, InvalidRequest
from service.domain.model import (
    MAX_BULK_ITEMS,
    MAX_WAIT_SECONDS,
    TERMINAL_STATUSES,
    CancelCommand,
    ItemEvent,
)
from service.usecases.auth import Caller
from service.usecases.cancel import Canceller
from service.usecases.context import CallContext
from service.usecases.waiting import watch_result

log = logging.getLogger(__name__)


def check_wait(wait_seconds: int) -> None:
    """The wait bound shared by the single and the bulk cancel (400 before anything happens)."""
    if not 0 <= wait_seconds <= MAX_WAIT_SECONDS:
        raise InvalidRequest(f"wait_seconds must be between 0 and {MAX_WAIT_SECONDS}", param="wait_seconds")


def check_items(items: Sequence[tuple[str, str]], wait_seconds: int) -> None:
    """The bounds of a bulk call; an error here refuses the whole call."""
    if not 1 <= len(items) <= MAX_BULK_ITEMS:
        raise InvalidRequest(f"batches must hold 1 to {MAX_BULK_ITEMS} items, got {len(items)}", param="batches")
    check_wait(wait_seconds)
    for index, (batch_id, provider) in enumerate(items):
        if not batch_id:
            raise InvalidRequest(f"batches[{index}].id is required", param=f"batches[{index}].id")
        if not provider.strip():
            raise InvalidRequest(f"batches[{index}].provider is required", param=f"batches[{index}].provider")


@dataclass(slots=True)
class BulkCall:
    """One checked bulk call, ready to run with the canceller (the config) current at its start."""

    canceller: Canceller
    caller: Caller
    # Distinct (id, provider) -> the indexes it appears at, in first-appearance order.
    items: dict[tuple[str, str], list[int]]
    # The provider name as sent at each index (events echo it; the lookup ignores case).
    sent_providers: list[str]
    wait_seconds: int
    # The call's headers, its caller's identity, its record and its deadline, shared by every item.
    call: CallContext
    raw_response_requested: bool = False


@dataclass(slots=True)
class _Run:
    """A bulk call running: its bound on upstream calls in flight, and the queue its items' events
    go to."""

    bulk: BulkCall
    gate: asyncio.Semaphore
    events: asyncio.Queue[ItemEvent] = field(default_factory=asyncio.Queue)

    def report(self, event: ItemEvent) -> None:
        self.events.put_nowait(event)


class BulkCanceller:
    """Runs bulk calls, each with the canceller it was prepared with; `concurrency` (upstream calls in
    flight per bulk call) defaults to that canceller's `client.bulk_concurrency`."""

    def __init__(self, concurrency: int | None = None) -> None:
        self._concurrency = concurrency

    def prepare(
        self,
        canceller: Canceller,
        items: Sequence[tuple[str, str]],
        wait_seconds: int,
        call: CallContext,
        raw_response_requested: bool = False,
    ) -> BulkCall:
        """Checks the whole call (bounds, then who is calling): raises its 400/401."""
        check_items(items, wait_seconds)
        caller = canceller.auth.authenticate(call.headers)
        call.caller = caller.identity
        grouped: dict[tuple[str, str], list[int]] = {}
        for index, (batch_id, provider) in enumerate(items):
            grouped.setdefault((batch_id, provider.strip().lower()), []).append(index)
        return BulkCall(
            canceller,
            caller,
            grouped,
            [provider for _, provider in items],
            wait_seconds,
            call,
            raw_response_requested,
        )

    async def run(self, bulk: BulkCall) -> AsyncGenerator[ItemEvent, None]:
        """Every item's events as they happen; ends once each has had its final one. Closing the
        iterator (the caller went away) stops every upstream call and read at once."""
        run = _Run(bulk, asyncio.Semaphore(self._concurrency or bulk.canceller.config.client.bulk_concurrency))
        tasks = [
            asyncio.create_task(self._item(run, indexes[0], batch_id, provider))
            for (batch_id, provider), indexes in bulk.items.items()
        ]
        indexes_of = {indexes[0]: indexes for indexes in bulk.items.values()}
        pending = len(tasks)
        try:
            while pending:
                event = await run.events.get()
                if event.final:
                    pending -= 1
                for index in indexes_of[event.index]:
                    yield replace(event, index=index, provider=bulk.sent_providers[index])
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _item(self, run: _Run, index: int, batch_id: str, provider: str) -> None:
        """One distinct item: the single cancel's checks, its cancel call, then its wait."""
        bulk = run.bulk
        canceller = bulk.canceller
        command = CancelCommand(
            batch_id=batch_id,
            provider=provider,
            raw_response_requested=bulk.raw_response_requested,
            wait_seconds=bulk.wait_seconds,
        )
        access = bulk.call.access
        try:
            target = await canceller.target(bulk.caller, provider, batch_id)  # 400/403/429 for this item only
            async with run.gate:
                if access is not None:  # the caller may have lost its access while this item queued
                    access.check(target.provider.name)
                outcome = await canceller.cancel_target(target, command, bulk.call)
        except GatewayError as error:  # exactly what a single cancel of this batch would fail with
            run.report(ItemEvent(index, batch_id, provider, True, error=error))
            return
        except Exception as exc:  # noqa: BLE001 - one item's bug must not end the others' stream
            run.report(ItemEvent(index, batch_id, provider, True, error=_internal(exc, provider)))
            return
        result = outcome.result
        if bulk.wait_seconds == 0 or result.batch.status in TERMINAL_STATUSES:
            run.report(ItemEvent(index, batch_id, provider, True, result=result))
            return
        run.report(ItemEvent(index, batch_id, provider, False, result=result))
        final = False
        try:
            async for waited, final in watch_result(canceller, outcome, command, bulk.call, gate=lambda: run.gate):
                run.report(ItemEvent(index, batch_id, provider, final, result=waited))
        except GatewayError as error:  # the caller lost its access while waiting (401/403)
            if not final:
                error.provider = error.provider or result.provider
                run.report(ItemEvent(index, batch_id, provider, True, error=error))
        except Exception as exc:  # noqa: BLE001
            if not final:
                run.report(ItemEvent(index, batch_id, provider, True, error=_internal(exc, provider)))


def _internal(exc: Exception, provider: str) -> GatewayError:
    """An unexpected failure of one item: logged with its traceback, reported without details."""
    log.error("unexpected error in a bulk cancel item", exc_info=exc)
    return GatewayError("internal error", provider=provider)
