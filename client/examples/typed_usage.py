"""A short program as a service author writes it against `batchgate-client`.

`make lint` type-checks it against the installed package with mypy --strict and pyright (strict),
so the public types hold: explicit constructor arguments, typed results with `int | None` where a
provider may not report, `Literal` statuses that a `match` covers exhaustively, closable streams
(also through `contextlib.aclosing`), the error classes, and cancel by selector as a typed
long-running `Operation` (its metadata, its batches' `Literal` outcomes, its error's exception
class). tests/integration/test_client.py runs it against a real service.

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
    BatchOutcome,
    BatchRef,
    BatchStatus,
    CancelEvent,
    CancelMatchingMetadata,
    Conflict,
    Health,
    MatchedBatch,
    NotFound,
    Operation,
    OperationsPage,
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


def done_with(outcome: BatchOutcome) -> bool:
    """Whether a batch an operation found needs nothing more from us."""
    match outcome:
        case "cancelled" | "already_ended" | "matched":
            return True
        case "failed" | "skipped" | "pending" | "unknown":
            return False
        case _:
            assert_never(outcome)


def report(operation: Operation) -> bool:
    meta: CancelMatchingMetadata = operation.metadata
    print(operation.name, meta.state, meta.matched, meta.cancel_accepted, meta.failed, meta.created_by)
    if operation.error is not None:
        code: int = operation.error.code
        cause: BatchgateError = operation.error.exception
        print("refused:", code, operation.error.message, type(cause).__name__, isinstance(cause, Conflict))
        return False
    batches: tuple[MatchedBatch, ...] = operation.result.batches if operation.result is not None else ()
    for batch in batches:
        status: BatchStatus | None = batch.status
        why = f" ({batch.error.status_code} {batch.error.message})" if batch.error is not None else ""
        print(batch.provider, batch.id, batch.key_id, batch.outcome, status, why)
    return all(done_with(batch.outcome) for batch in batches)


def stop_sync(target: str, batch_ids: list[str]) -> bool:
    """A dry run of named batches, then the real run, followed until done; then the history."""
    with BatchgateClient(target, vk=os.environ.get("BATCHGATE_VK")) as client:
        named = [BatchRef(batch_id, "openai") for batch_id in batch_ids]
        preview = client.wait_operation(client.cancel_matching(batches=named, validate_only=True).name, timeout=30)
        report(preview)
        started: Operation = client.cancel_matching(batches=named, max_batches=10, deadline_seconds=600)
        done = client.wait_operation(started.name, timeout=60.0)
        page: OperationsPage = client.list_operations_page(page_size=10)
        recent: list[str] = [operation.name for operation in client.list_operations(page_size=5)]
        print(len(page.operations), page.next_page_token or "(last page)", recent[:2])
        return done.done and report(done)


async def stop_async(target: str, batch_ids: list[str]) -> bool:
    async with AsyncBatchgateClient(target, vk=os.environ.get("BATCHGATE_VK")) as client:
        started = await client.cancel_matching(batches=[(batch_id, "openai") for batch_id in batch_ids])
        operation = await client.get_operation(started.id)
        while not operation.done:
            operation = await client.wait_operation(operation.name, 1.0)  # one progress step
            print(operation.metadata.state, operation.metadata.settled, "of", operation.metadata.matched)
        async for listed in client.list_operations():
            print(listed.name, listed.done)
        await client.cancel_operation(operation.name)  # a done operation stays as it is
        ok = report(operation)
        await client.delete_operation(operation.name)
        return ok


def main(target: str, batch_ids: list[str]) -> int:
    """Four OpenAI batch ids: two for the blocking client, two for the asyncio one; then both stop
    all four again by name, as operations (a batch still cancelling is accepted again; one that
    ended is `already_ended`: nothing fails)."""
    finals = cancel_sync(target, batch_ids[:2])
    health = asyncio.run(cancel_async(target, batch_ids[2:4]))
    stopped = stop_sync(target, batch_ids) and asyncio.run(stop_async(target, batch_ids))
    return 0 if all(event.ok for event in finals) and health.status == "ok" and stopped else 1


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1:50051"
    sys.exit(main(target, sys.argv[2:] or [f"batch_example_{n}" for n in range(1, 5)]))
