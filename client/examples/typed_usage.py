"""A short program as a service author writes it against `batchgate-client`.

`make lint` type-checks it against the installed package with mypy --strict and pyright (strict),
so the public types hold: explicit constructor arguments, typed results with `int | None` where a
provider may not report, `Literal` statuses that a `match` covers exhaustively, closable streams
(also through `contextlib.aclosing`), and the error classes. tests/integration/test_client.py runs
it against a real service.

    python client/examples/typed_usage.py [HOST:PORT [BATCH_ID ...]]   # e.g. against `make run`
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import assert_never

from batchgate_client import (
    AsyncBatchgateClient,
    Batch,
    BatchgateClient,
    BatchgateError,
    BatchRef,
    BatchStatus,
    CancelEvent,
    Conflict,
    Health,
    NotFound,
    RateLimited,
    RetryPolicy,
)


def settled(status: BatchStatus) -> bool:
    """Whether a batch in this status needs nothing more from us."""
    match status:
        case "cancelled" | "completed" | "failed" | "expired" | "ended":
            return True
        case "validating" | "in_progress" | "finalizing" | "cancelling" | "unknown":
            return False
        case _:
            assert_never(status)


def describe(batch: Batch) -> str:
    total: int | None = batch.request_counts.total
    when: int | None = batch.cancelled_at or batch.cancelling_at
    counts = f"{total} requests" if total is not None else "requests not reported"
    since = f" since {when}" if when is not None else ""
    note = f" ({batch.warning})" if batch.warning is not None else ""
    return f"{batch.id} on {batch.provider}: {batch.status}{since}, {counts}{note}"


def cancel_sync(target: str, batch_ids: list[str]) -> list[CancelEvent]:
    retry = RetryPolicy(attempts=2, initial_backoff=0.1)
    with BatchgateClient(target, vk=os.environ.get("BATCHGATE_VK"), timeout=10.0, retry=retry) as client:
        first: Batch = client.cancel(batch_ids[0], "openai", ok_if_ended=True)
        print(describe(first), "settled" if settled(first.status) else "not yet")
        try:
            client.cancel("missing_example", "openai", timeout=5.0)
        except NotFound as err:
            status_code: int = err.status_code
            request_id: str | None = err.request_id
            print("not found:", status_code, err.code, err.message, request_id)
        except RateLimited as err:
            retry_after: float | None = err.retry_after
            print("rate limited; retry after", retry_after)
        finals: list[CancelEvent] = []
        items = [BatchRef(batch_id, "openai") for batch_id in batch_ids]
        with client.cancel_many(items, wait_seconds=0, ok_if_ended=True) as events:
            for event in events:
                if event.error is not None:
                    error: BatchgateError = event.error
                    print(event.index, event.id, "failed:", error.status_code, error.label)
                elif event.final and event.batch is not None:
                    print(event.index, describe(event.batch))
                if event.final:
                    finals.append(event)
        return finals


async def cancel_async(target: str, batch_ids: list[str]) -> Health:
    async with AsyncBatchgateClient(target, vk=os.environ.get("BATCHGATE_VK"), metadata={"x-team": "ml"}) as client:
        try:
            batch = await client.cancel(batch_ids[0], "openai")
            print(describe(batch))
        except Conflict as err:
            print("already ended:", err.message)
        # The 0.1 README's pattern, and the stream as its own context manager.
        async with contextlib.aclosing(client.cancel_many([(i, "openai") for i in batch_ids])) as events:
            async for event in events:
                print(event.index, event.status)
        async with client.cancel_many([{"id": batch_ids[-1], "provider": "openai"}], ok_if_ended=True) as more:
            statuses: list[str] = [event.status async for event in more]
            print(statuses)
        health = await client.health(timeout=5.0)
        for name, provider in health.providers.items():
            print(name, provider.circuit)
        workers: list[int] = [state.worker for state in health.workers]
        print(health.status, workers)
        return health


def main(target: str, batch_ids: list[str]) -> int:
    """Four OpenAI batch ids: two for the blocking client, two for the asyncio one."""
    finals = cancel_sync(target, batch_ids[:2])
    health = asyncio.run(cancel_async(target, batch_ids[2:4]))
    return 0 if all(event.ok for event in finals) and health.status == "ok" else 1


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    sys.exit(main(target, sys.argv[2:] or [f"batch_example_{n}" for n in range(1, 5)]))
