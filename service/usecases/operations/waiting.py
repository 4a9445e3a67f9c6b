"""The waiting phase (with `wait`): each accepted batch is read back in rounds (the waiting policy:
first after 1 s, gaps doubling to 30 s; `client.bulk_concurrency` reads at a time) until it reads
terminal or the operation gives up; a batch still running then keeps its last state and a warning."""

from __future__ import annotations

import asyncio

from service.domain.errors import GatewayError
from service.domain.model import TERMINAL_STATUSES
from service.domain.operations import CANCELLED, BatchItem
from service.infra.providers.http import RETRYABLE_STATUSES
from service.usecases.operations.run import Owner, Run


def _waiting(run: Run) -> list[BatchItem]:
    return [
        item for item in run.progress.items if item.outcome == CANCELLED and not item.settled and item.state is not None
    ]


async def wait_for_batches(run: Run) -> None:
    """Reads the accepted batches back until each is terminal or the operation gives up. Raises
    Stopped or Leaving."""
    policy = run.worker.policy.poll
    delay = policy.first_s
    while True:
        waiting = _waiting(run)
        remaining = run.remaining()
        if not waiting or remaining <= 0:
            break
        await run.control.sleep(min(delay, remaining))
        run.control.check()
        await _read_round(run, waiting)
        delay = policy.next_delay(delay, run.worker.timing.rand)
    for item in _waiting(run):
        assert item.state is not None
        item.warning = f"the batch is still {item.state.status} after waiting"
        run.progress.changed(item)


async def _read_round(run: Run, waiting: list[BatchItem]) -> None:
    """Reads every batch of `waiting` once, `client.bulk_concurrency` at a time."""
    with run.owner() as owner:
        pending = iter(waiting)

        async def reader() -> None:
            for item in pending:
                if run.control.halted:
                    return
                await _read_one(run, owner, item)

        concurrency = owner.config.client.bulk_concurrency
        await asyncio.gather(*(reader() for _ in range(min(concurrency, len(waiting)))))


async def _read_one(run: Run, owner: Owner, item: BatchItem) -> None:
    try:
        state = await owner.read(item, run.call())
    except GatewayError as err:
        if err.status_code not in RETRYABLE_STATUSES:
            item.warning, item.settled = f"reading the batch failed: {err.message}", True
            run.progress.changed(item)
        return
    assert item.state is not None
    if state.status != item.state.status or state.status in TERMINAL_STATUSES:
        item.state = state
        item.settled = state.status in TERMINAL_STATUSES
        item.warning = None
        run.progress.changed(item)
