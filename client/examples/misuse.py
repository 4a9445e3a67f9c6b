"""Mistakes the public types must catch. Each line below is an error for mypy --strict and for
pyright; each carries the ignore comment of both, and `make lint` makes an ignore that is no longer
needed an error (mypy's warn_unused_ignores, pyright's reportUnnecessaryTypeIgnoreComment): when
the types stop catching one of these, the check fails. Never run."""

# What a mistake evaluates to is unknown, so pyright's strict unknown-type reports would repeat each
# error on the lines after it; the mistakes themselves are what this file checks.
# pyright: reportUnknownVariableType=false, reportUnknownMemberType=false, reportUnknownArgumentType=false

from __future__ import annotations

from batchgate_client import AsyncBatchgateClient, Batch, BatchgateClient, Operation


def mistakes(client: BatchgateClient, batch: Batch) -> None:
    BatchgateClient("127.0.0.1:50051", timout=5)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    BatchgateClient("127.0.0.1:50051", vk=123)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    BatchgateClient("127.0.0.1:50051", "sk-bf-key")  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    client.cancel("batch_1", "openai", wait=60)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    later: int = batch.cancelled_at + 1  # type: ignore[operator]  # pyright: ignore[reportOptionalOperand]
    raw: object = batch.extra_fields  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
    print(later, raw)
    if batch.status == "canceled":  # type: ignore[comparison-overlap]  # pyright: ignore[reportUnnecessaryComparison]
        pass
    batch.status = "cancelled"  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]


def operation_mistakes(client: BatchgateClient, operation: Operation) -> None:
    client.cancel_matching(["openai"])  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    client.cancel_matching(statuses=["running"])  # type: ignore[list-item]  # pyright: ignore[reportArgumentType]
    client.cancel_matching(created_after="2h")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    client.cancel_matching(max=5)  # type: ignore[call-arg]  # pyright: ignore[reportCallIssue]
    count: int = len(operation.result.batches)  # type: ignore[union-attr]  # pyright: ignore[reportOptionalMemberAccess]
    print(count)
    if operation.metadata.state == "running":  # type: ignore[comparison-overlap]  # pyright: ignore[reportUnnecessaryComparison]
        pass
    if operation.result is not None and operation.result.batches[0].outcome == "canceled":  # type: ignore[comparison-overlap]  # pyright: ignore[reportUnnecessaryComparison]
        pass
    operation.done = True  # type: ignore[misc]  # pyright: ignore[reportAttributeAccessIssue]
    for _ in client.wait_operation(operation.name):  # type: ignore[attr-defined]  # pyright: ignore[reportGeneralTypeIssues]
        pass


async def async_mistakes(client: AsyncBatchgateClient) -> None:
    for _ in client.cancel_many([("batch_1", "openai")]):  # type: ignore[attr-defined]  # pyright: ignore[reportGeneralTypeIssues]
        pass
    batch: Batch = client.cancel("batch_1", "openai")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    print(batch)
    operation: Operation = client.get_operation("operations/x")  # type: ignore[assignment]  # pyright: ignore[reportAssignmentType]
    for _ in client.list_operations():  # type: ignore[attr-defined]  # pyright: ignore[reportGeneralTypeIssues]
        pass
    print(operation)
