"""Protobuf -> typed model: one small pure function per answer (`batchgate_client.models`).

A proto3 `optional` field is None when absent; a status outside its documented set becomes
"unknown" (the message keeps the word). Nothing here calls the network.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar, cast, get_args

from google.longrunning import operations_proto_pb2 as operations_pb
from google.protobuf import any_pb2, json_format
from google.rpc import status_pb2

from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb
from batchgate_client.errors import REQUEST_TYPE, BatchgateError, Conflict, from_detail, from_status
from batchgate_client.models import (
    BATCH_OUTCOMES,
    BATCH_STATUSES,
    JSON,
    OPERATION_STATES,
    Batch,
    BatchRef,
    BatchSelector,
    BatchStatus,
    CancelEvent,
    CancelMatchingMetadata,
    CancelMatchingResult,
    CircuitState,
    ConfigState,
    Health,
    HealthStatus,
    MatchedBatch,
    Operation,
    OperationError,
    OperationsPage,
    ProviderHealth,
    RateLimitStore,
    RequestCounts,
    StoreState,
    StoreType,
)

_L = TypeVar("_L", bound=str)

_CIRCUITS: frozenset[CircuitState] = frozenset(get_args(CircuitState))
_HEALTH: frozenset[HealthStatus] = frozenset(get_args(HealthStatus))
_STORE_TYPES: frozenset[StoreType] = frozenset(get_args(StoreType))
_STORE_STATES: frozenset[StoreState] = frozenset(get_args(StoreState))


def _literal(value: str, allowed: Collection[_L]) -> _L:
    """`value` when it is one of `allowed` (a Literal's values, "unknown" among them), else "unknown"."""
    return cast(_L, value if value in allowed else "unknown")


def request_counts_from_proto(counts: pb.RequestCounts) -> RequestCounts:
    has = counts.HasField
    return RequestCounts(
        total=counts.total if has("total") else None,
        completed=counts.completed if has("completed") else None,
        failed=counts.failed if has("failed") else None,
        succeeded=counts.succeeded if has("succeeded") else None,
        expired=counts.expired if has("expired") else None,
        canceled=counts.canceled if has("canceled") else None,
        pending=counts.pending if has("pending") else None,
    )


def batch_from_proto(message: pb.BatchCancelResponse) -> Batch:
    extra = message.extra_fields
    raw_response: JSON = None
    if extra.HasField("raw_response"):
        raw_response = cast(JSON, json_format.MessageToDict(extra.raw_response))
    return Batch(
        id=message.id,
        provider=extra.provider,
        status=_literal(message.status, BATCH_STATUSES),
        object=message.object,
        request_counts=request_counts_from_proto(message.request_counts),
        cancelling_at=message.cancelling_at if message.HasField("cancelling_at") else None,
        cancelled_at=message.cancelled_at if message.HasField("cancelled_at") else None,
        warning=extra.warning if extra.HasField("warning") else None,
        latency_ms=extra.latency,
        raw_response=raw_response,
        raw=message,
    )


def ended_batch(batch_id: str, provider: str, error: Conflict) -> Batch:
    """The result `ok_if_ended=True` gives for a 409: the batch already ended (which terminal status
    the provider did not say in a way batchgate passes on, so "ended"); the provider's refusal is
    the warning."""
    warning = f"already ended: {error.message}"
    raw = pb.BatchCancelResponse(
        id=batch_id,
        object="batch",
        status="ended",
        extra_fields=pb.ExtraFields(request_type=REQUEST_TYPE, provider=error.provider or provider, warning=warning),
    )
    status: BatchStatus = "ended"
    return Batch(
        id=batch_id,
        provider=error.provider or provider,
        status=status,
        warning=warning,
        already_ended=True,
        raw=raw,
    )


def event_from_proto(
    message: pb.CancelManyEvent, *, request_id: str | None, offset: int = 0, ok_if_ended: bool = False
) -> CancelEvent:
    """One CancelMany event; `offset` is added to its index (the position of its call's first item
    in the caller's list)."""
    which = message.WhichOneof("result")
    batch: Batch | None = None
    error: BatchgateError | None = None
    if which == "batch":
        batch = batch_from_proto(message.batch)
    elif which == "error":
        error = from_detail(message.error, request_id=request_id)
        if ok_if_ended and isinstance(error, Conflict):
            batch, error = ended_batch(message.id, message.provider, error), None
    return CancelEvent(
        index=message.index + offset,
        id=message.id,
        provider=message.provider,
        final=message.final,
        batch=batch,
        error=error,
    )


def health_from_proto(message: pb.HealthResponse) -> Health:
    store = None
    if message.HasField("rate_limit_store"):
        raw_store = message.rate_limit_store
        store = RateLimitStore(
            type=_literal(raw_store.type, _STORE_TYPES),
            state=_literal(raw_store.state, _STORE_STATES),
            raw=raw_store,
        )
    return Health(
        status=_literal(message.status, _HEALTH),
        providers={
            name: ProviderHealth(
                circuit=_literal(message.providers[name].circuit, _CIRCUITS), raw=message.providers[name]
            )
            for name in sorted(message.providers)
        },
        rate_limit_store=store,
        config=config_state_from_proto(message.config) if message.HasField("config") else None,
        workers=tuple(config_state_from_proto(worker) for worker in message.workers),
        raw=message,
    )


def config_state_from_proto(message: pb.ConfigState) -> ConfigState:
    return ConfigState(
        worker=message.worker,
        version=message.version,
        loaded_at=message.loaded_at,
        last_reload_successful=message.last_reload_successful,
        raw=message,
    )


# --- operations ------------------------------------------------------------------------------------


def selector_from_proto(message: pb.BatchSelector) -> BatchSelector:
    return BatchSelector(
        providers=tuple(message.providers),
        statuses=tuple(_literal(status, BATCH_STATUSES) for status in message.statuses),
        created_after=message.created_after or None,
        created_before=message.created_before or None,
        metadata={key: message.metadata[key] for key in sorted(message.metadata)},
        batches=tuple(BatchRef(ref.id, ref.provider) for ref in message.batches),
        raw=message,
    )


def metadata_from_proto(message: pb.CancelMatchingMetadata) -> CancelMatchingMetadata:
    return CancelMatchingMetadata(
        selector=selector_from_proto(message.selector),
        validate_only=message.validate_only,
        state=_literal(message.state, OPERATION_STATES),
        matched=message.matched,
        cancel_accepted=message.cancel_accepted,
        already_ended=message.already_ended,
        failed=message.failed,
        pending=message.pending,
        skipped=message.skipped,
        create_time=message.create_time,
        update_time=message.update_time,
        created_by=message.created_by,
        raw=message,
    )


def matched_batch_from_proto(message: pb.MatchedBatch) -> MatchedBatch:
    """One batch of a result; the proto's empty outcome (not settled yet) reads "pending"."""
    return MatchedBatch(
        id=message.id,
        provider=message.provider,
        key_id=message.key_id,
        outcome=_literal(message.outcome or "pending", BATCH_OUTCOMES),
        batch=batch_from_proto(message.batch) if message.HasField("batch") else None,
        error=from_detail(message.error) if message.HasField("error") else None,
        raw=message,
    )


def result_from_proto(message: pb.CancelMatchingResult) -> CancelMatchingResult:
    return CancelMatchingResult(
        batches=tuple(matched_batch_from_proto(batch) for batch in message.batches), raw=message
    )


def operation_error_from_proto(status: status_pb2.Status) -> OperationError:
    """A done operation's `error`: its ErrorDetail (batchgate attaches it last) gives the exception
    its class and the REST error's fields."""
    detail: pb.ErrorDetail | None = None
    for packed in status.details:
        candidate = pb.ErrorDetail()
        if packed.Unpack(candidate):
            detail = candidate
    return OperationError(
        code=status.code,
        message=status.message,
        exception=from_status(status.code, status.message, detail),
        raw=status,
    )


def operation_from_proto(message: operations_pb.Operation) -> Operation:
    """An Operation whose metadata is a CancelMatchingMetadata (batchgate's only kind). The batches
    come from `response` or, for an operation stopped after matching, from its error's details."""
    metadata = pb.CancelMatchingMetadata()
    message.metadata.Unpack(metadata)  # an absent or foreign metadata leaves the defaults ("unknown")
    which = message.WhichOneof("result")
    error: OperationError | None = None
    packed: list[any_pb2.Any] = []
    if which == "response":
        packed = [message.response]
    elif which == "error":
        error = operation_error_from_proto(message.error)
        packed = list(message.error.details)
    result: CancelMatchingResult | None = None
    for candidate in packed:
        unpacked = pb.CancelMatchingResult()
        if candidate.Unpack(unpacked):
            result = result_from_proto(unpacked)
            break
    return Operation(
        name=message.name,
        done=message.done,
        metadata=metadata_from_proto(metadata),
        result=result,
        error=error,
        raw=message,
    )


def operations_page_from_proto(message: operations_pb.ListOperationsResponse) -> OperationsPage:
    return OperationsPage(
        operations=tuple(operation_from_proto(op) for op in message.operations),
        next_page_token=message.next_page_token,
        raw=message,
    )
