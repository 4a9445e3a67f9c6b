"""Domain -> proto: the servicer's answers, each a small pure function (in the manner of MLServer's
converters). The request side (proto -> CancelCommand) lives with the routes in service.edge.api."""

from __future__ import annotations

from google.protobuf import any_pb2, json_format
from google.rpc import status_pb2

from service.domain.errors import GatewayError
from service.domain.model import BatchState, CancelResult, ItemEvent
from service.edge.envelope import REQUEST_TYPE
from service.edge.status import grpc_code
from service.gen.batchgate.v1 import batchgate_pb2 as pb

# BatchDetails fields by kind, as BatchCancelResponse carries them.
_DETAIL_SCALARS = (
    "endpoint",
    "input_file_id",
    "completion_window",
    "model",
    "output_file_id",
    "error_file_id",
    "in_progress_at",
    "finalizing_at",
    "completed_at",
    "failed_at",
    "expired_at",
)
_DETAIL_OBJECTS = ("metadata", "errors", "usage")


def result_to_proto(result: CancelResult, openai: bool = False) -> pb.BatchCancelResponse:
    """The unified answer; with `openai` (the OpenAI-compatible routes) also OpenAI's Batch fields
    the provider reported."""
    batch = result.batch
    response = pb.BatchCancelResponse(
        id=batch.id,
        object="batch",
        status=batch.status,
        cancelling_at=batch.cancelling_at,
        cancelled_at=batch.cancelled_at,
        extra_fields=pb.ExtraFields(
            request_type=REQUEST_TYPE,
            provider=result.provider,
            latency=result.latency_ms,
            chunk_index=0,
            warning=result.warning,
        ),
    )
    if batch.counts is not None:
        counts = batch.counts
        response.request_counts.CopyFrom(
            pb.RequestCounts(
                total=counts.total,
                completed=counts.completed,
                failed=counts.failed,
                succeeded=counts.succeeded,
                expired=counts.expired,
                canceled=counts.canceled,
                pending=counts.pending,
            )
        )
    if result.raw_response is not None:
        json_format.ParseDict(result.raw_response, response.extra_fields.raw_response)
    if openai:
        _openai_fields(batch, response)
    return response


def _openai_fields(batch: BatchState, response: pb.BatchCancelResponse) -> None:
    for name in ("created_at", "expires_at"):
        value = getattr(batch, name)
        if value is not None:
            setattr(response, name, value)
    details = batch.details
    if details is None:
        return
    for name in _DETAIL_SCALARS:
        value = getattr(details, name)
        if value is not None:
            setattr(response, name, value)
    for name in _DETAIL_OBJECTS:
        value = getattr(details, name)
        if value is not None:
            json_format.ParseDict(value, getattr(response, name))


def error_to_status(error: GatewayError) -> status_pb2.Status:
    packed = any_pb2.Any()
    packed.Pack(error_detail(error))
    return status_pb2.Status(code=grpc_code(error).value[0], message=error.message, details=[packed])


def error_detail(error: GatewayError) -> pb.ErrorDetail:
    """The typed detail of an error: the REST error body's fields (service.edge.envelope.bifrost; a unit
    test holds the two together)."""
    return pb.ErrorDetail(
        is_bifrost_error=error.is_bifrost_error,
        status_code=error.status_code,
        error=pb.ErrorField(type=error.type, code=error.code, message=error.message, param=error.param),
        extra_fields=pb.ErrorExtraFields(provider=error.provider, request_type=error.request_type),
    )


def event_to_proto(event: ItemEvent) -> pb.CancelManyEvent:
    """One bulk event: the single cancel's answer (`batch`) or its error (`error`)."""
    message = pb.CancelManyEvent(index=event.index, id=event.batch_id, provider=event.provider, final=event.final)
    if event.result is not None:
        message.batch.CopyFrom(result_to_proto(event.result))
    elif event.error is not None:
        message.error.CopyFrom(error_detail(event.error))
    return message


def event_outcome(event: ItemEvent) -> tuple[str, int]:
    """gRPC code name and HTTP status of an item's final event, for its audit event and the counts."""
    if event.error is None:
        return "OK", 200
    return grpc_code(event.error).name, event.error.status_code
