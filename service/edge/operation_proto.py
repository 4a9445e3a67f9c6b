"""Operations in their proto form: a CancelMatching request in domain terms, and a stored operation
as the `google.longrunning.Operation` GetOperation answers (and the webhook POSTs as JSON).

`metadata` is a CancelMatchingMetadata; a done operation has `response` (a CancelMatchingResult
with every batch) or `error`: a google.rpc.Status whose code follows the error's HTTP status
(409 FAILED_PRECONDITION, 499 CANCELLED, 401 UNAUTHENTICATED, a provider's own), whose details hold
the CancelMatchingResult when batches were kept (a stopped operation) and, last, the ErrorDetail
with the REST error body's fields. Every type an `Any` here holds is in Envoy's descriptor set.

A done operation may hold 100,000 batches: rendering them takes about a second of Python (its JSON
about three), so `render_operation` and `operation_json` render them `RENDER_PER_TURN` at a time
with a turn of the event loop in between, and every other call of the worker goes on meanwhile
(`python -m bench.operation_render` measures it). The bytes are the same as rendering at once: a
repeated field's encoding is its elements' encodings one after the other.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
from google.longrunning import operations_pb2
from google.protobuf import any_pb2, json_format
from google.rpc import status_pb2

from service.domain.errors import GatewayError
from service.domain.model import CancelResult
from service.domain.operations import BatchItem, CancelMatchingCommand, Failure, Operation, Selector
from service.edge.converters import error_detail, result_to_proto
from service.edge.status import grpc_code
from service.gen.batchgate.v1 import batchgate_pb2 as pb

# Batches rendered between two turns of the event loop: each part takes about 5 ms (JSON is slower).
RENDER_PER_TURN = 1000
JSON_PER_TURN = 200
# How the REST API prints messages (Envoy's transcoder): proto field names, every field.
JSON_OPTIONS: dict[str, Any] = {"preserving_proto_field_name": True, "always_print_fields_with_no_presence": True}


def matching_command(request: pb.CancelMatchingRequest) -> CancelMatchingCommand:
    """The request as sent (defaults are filled in by the use case, which checks it)."""
    selector = request.selector
    return CancelMatchingCommand(
        selector=Selector(
            providers=tuple(selector.providers),
            statuses=tuple(selector.statuses),
            created_after=selector.created_after,
            created_before=selector.created_before,
            metadata=dict(selector.metadata),
            batches=tuple((ref.id, ref.provider) for ref in selector.batches),
        ),
        validate_only=request.validate_only,
        max_batches=request.max_batches,
        wait=request.wait,
        deadline_seconds=request.deadline_seconds,
        notify_url=request.notify.url,
    )


def selector_to_proto(selector: Selector) -> pb.BatchSelector:
    return pb.BatchSelector(
        providers=selector.providers,
        statuses=selector.statuses,
        created_after=selector.created_after,
        created_before=selector.created_before,
        metadata=selector.metadata,
        batches=[pb.BatchRef(id=batch_id, provider=provider) for batch_id, provider in selector.batches],
    )


def metadata_to_proto(operation: Operation) -> pb.CancelMatchingMetadata:
    counts = operation.counts
    return pb.CancelMatchingMetadata(
        selector=selector_to_proto(operation.command.selector),
        validate_only=operation.command.validate_only,
        state=operation.state,
        matched=counts.matched,
        cancel_accepted=counts.cancel_accepted,
        already_ended=counts.already_ended,
        failed=counts.failed,
        pending=counts.pending,
        skipped=counts.skipped,
        create_time=int(operation.create_time),
        update_time=int(operation.update_time),
        created_by=operation.created_by,
    )


def failure_error(failure: Failure) -> GatewayError:
    return GatewayError(
        failure.message,
        status_code=failure.status_code,
        type=failure.type,
        code=failure.code,
        param=failure.param,
        provider=failure.provider,
        is_bifrost_error=failure.is_bifrost_error,
    )


def item_to_proto(item: BatchItem) -> pb.MatchedBatch:
    batch = pb.MatchedBatch(id=item.batch_id, provider=item.provider, key_id=item.key_id, outcome=item.outcome)
    if item.state is not None:
        result = CancelResult(item.state, item.provider, item.latency_ms, warning=item.warning)
        batch.batch.CopyFrom(result_to_proto(result))
    if item.error is not None:
        batch.error.CopyFrom(error_detail(failure_error(item.error)))
    return batch


def result_to_any(items: list[BatchItem]) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(pb.CancelMatchingResult(batches=[item_to_proto(item) for item in items]))
    return packed


def operation_to_proto(operation: Operation, items: list[BatchItem] | None) -> operations_pb2.Operation:
    """The Operation; a done one with its result when `items` are given (ListOperations leaves them
    out: GetOperation answers each one whole)."""
    message = operations_pb2.Operation(name=operation.name, done=operation.done)
    message.metadata.Pack(metadata_to_proto(operation))
    if not operation.done or items is None:
        if operation.done and operation.error is not None:
            message.error.CopyFrom(error_status(operation.error, None))
        return message
    if operation.error is not None:
        message.error.CopyFrom(error_status(operation.error, items if operation.error_has_batches else None))
    else:
        message.response.CopyFrom(result_to_any(items))
    return message


def error_status(failure: Failure, items: list[BatchItem] | None) -> status_pb2.Status:
    error = failure_error(failure)
    detail = any_pb2.Any()
    detail.Pack(error_detail(error))
    details = [result_to_any(items), detail] if items is not None else [detail]
    return status_pb2.Status(code=grpc_code(error).value[0], message=failure.message, details=details)


def _result(message: operations_pb2.Operation, operation: Operation) -> Any | None:
    """Where a done operation's message carries its batches (a CancelMatchingResult): its response,
    or the first detail of the error of a stopped one; None when it carries none."""
    if not operation.done:
        return None
    if operation.error is None:
        return message.response
    return message.error.details[0] if operation.error_has_batches else None


async def _parts(items: list[BatchItem], size: int) -> AsyncIterator[pb.CancelMatchingResult]:
    """The batches as CancelMatchingResults of `size`, with a turn of the event loop before each but
    the first."""
    for start in range(0, len(items), size):
        if start:
            await asyncio.sleep(0)
        yield pb.CancelMatchingResult(batches=[item_to_proto(item) for item in items[start : start + size]])


async def render_operation(operation: Operation, items: list[BatchItem] | None) -> operations_pb2.Operation:
    """`operation_to_proto`, with the batches rendered a part at a time (see the module's doc)."""
    message = operation_to_proto(operation, None if items is None else [])
    result = _result(message, operation)
    if result is not None and items:
        result.value = b"".join([part.SerializeToString() async for part in _parts(items, RENDER_PER_TURN)])
    return message


async def operation_json(operation: Operation, items: list[BatchItem]) -> bytes:
    """The done operation as REST GetOperation prints it (proto field names, every field): the
    webhook's body. Rendered a part at a time (see the module's doc)."""
    message = operation_to_proto(operation, [])
    data = json_format.MessageToDict(message, **JSON_OPTIONS)
    if _result(message, operation) is not None:
        # Each batch's JSON is made once, as a part is rendered; the last step only copies them.
        batches: list[orjson.Fragment] = []
        async for part in _parts(items, JSON_PER_TURN):
            batches += map(_fragment, json_format.MessageToDict(part, **JSON_OPTIONS)["batches"])
        result = data["response"] if operation.error is None else data["error"]["details"][0]
        result["batches"] = batches
    return orjson.dumps(data)


def _fragment(value: Any) -> orjson.Fragment:
    return orjson.Fragment(orjson.dumps(value))
