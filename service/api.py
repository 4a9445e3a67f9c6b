"""The gRPC face of the use case: a thin servicer, its proto<->domain converters, and the one
place where errors become gRPC statuses."""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable

import grpc
from google.protobuf import any_pb2, empty_pb2, json_format
from google.rpc import status_pb2
from grpc_status import rpc_status

from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from service.cancel import Canceller
from service.compat import (
    SURFACE_DEFAULT_PROVIDER,
    RenderedError,
    anthropic_error,
    bedrock_error,
    bifrost_error,
    google_error,
    to_anthropic,
)
from service.errors import REQUEST_TYPE, GatewayError, InvalidRequest
from service.model import CancelCommand, CancelResult
from service.routes import ORIGINAL_PATH_HEADER, RouteTable

log = logging.getLogger(__name__)

# Headers (gRPC metadata) the edge reads to shape REST error answers: see gateway/errors.lua.
ERROR_BODY_HEADER = "x-bf-error-body"
ERROR_STATUS_HEADER = "x-bf-status"
RAW_RESPONSE_HEADER = "x-bf-send-back-raw-response"

MODEL_PROVIDER_HEADER = "x-model-provider"
EXPECTED_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"

_METHODS = pb.DESCRIPTOR.services_by_name["BatchService"].methods_by_name
ROUTES = {name: RouteTable(method) for name, method in _METHODS.items()}


def command_from_proto(
    request: pb.CancelBatchRequest, metadata: Any, method: str = "Cancel", surface: str | None = None
) -> CancelCommand:
    """The domain command for one call of `method`. `surface` is fixed by the drop-in RPCs; for
    `Cancel` it comes from the route (REST) or the request (gRPC)."""
    headers = {key: value for key, value in metadata or () if not key.endswith("-bin")}
    batch_id = request.batch_id
    if surface is None:
        surface = request.surface
    original_path = headers.get(ORIGINAL_PATH_HEADER)
    if original_path is not None:
        # A REST call: only the path may set the batch id and the surface (see service.routes).
        route = ROUTES[method].path_values(original_path)
        if route is not None:
            if route["batch_id"] != batch_id:
                raise InvalidRequest("batch_id must be given in the URL path only", param="batch_id")
            surface = route["surface"]
    provider = (request.provider or headers.get(MODEL_PROVIDER_HEADER, "")).strip().lower()
    return CancelCommand(
        batch_id=batch_id,
        provider=provider or SURFACE_DEFAULT_PROVIDER.get(surface, ""),
        raw_response_requested=headers.get(RAW_RESPONSE_HEADER, "").lower() == "true",
        headers=headers,
    )


def time_budget(grpc_remaining: float | None, headers: dict[str, str]) -> float | None:
    """Seconds the call may take: the gRPC deadline, or for REST calls the route timeout Envoy
    announces in `x-envoy-expected-rq-timeout-ms`, whichever is shorter (None: no limit here)."""
    expected = headers.get(EXPECTED_TIMEOUT_HEADER, "")
    if expected.isascii() and expected.isdigit():
        edge = int(expected) / 1000
        return edge if grpc_remaining is None else min(edge, grpc_remaining)
    return grpc_remaining


def result_to_proto(result: CancelResult) -> pb.BatchCancelResponse:
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
    return response


def error_to_status(error: GatewayError) -> status_pb2.Status:
    detail = pb.ErrorDetail(
        is_bifrost_error=error.is_bifrost_error,
        status_code=error.status_code,
        error=pb.ErrorField(type=error.type, code=error.code, message=error.message, param=error.param),
        extra_fields=pb.ErrorExtraFields(provider=error.provider, request_type=REQUEST_TYPE),
    )
    packed = any_pb2.Any()
    packed.Pack(detail)
    return status_pb2.Status(code=error.grpc_code.value[0], message=error.message, details=[packed])


def maps_errors(render: Callable[[GatewayError], RenderedError] = bifrost_error):
    """Decorates a servicer method: a raised GatewayError becomes its gRPC status (typed
    ErrorDetail attached) plus, for the REST edge, the error rendered in the route's own shape;
    anything unexpected becomes INTERNAL with details hidden."""

    def decorate(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                return await method(self, request, context)
            except GatewayError as error:
                failure = error
            except Exception:
                log.exception("unexpected error in %s", method.__name__)
                failure = GatewayError("internal error")
            rest = render(failure)
            await context.send_initial_metadata(
                (
                    *failure.headers.items(),
                    *rest.headers,
                    (ERROR_BODY_HEADER, rest.body),
                    (ERROR_STATUS_HEADER, str(rest.status)),
                )
            )
            await context.abort_with_status(rpc_status.to_status(error_to_status(failure)))

        return wrapper

    return decorate


class BatchServicer(pb_grpc.BatchServiceServicer):
    """Four thin methods: convert in, run the use case, convert out."""

    def __init__(self, canceller: Canceller) -> None:
        self._canceller = canceller

    async def _cancel(self, request, context, method: str, surface: str | None = None) -> CancelResult:
        command = command_from_proto(request, context.invocation_metadata(), method, surface)
        return await self._canceller.cancel(command, time_budget(context.time_remaining(), command.headers))

    @maps_errors()
    async def Cancel(self, request: pb.CancelBatchRequest, context: grpc.aio.ServicerContext) -> pb.BatchCancelResponse:
        return result_to_proto(await self._cancel(request, context, "Cancel"))

    @maps_errors(anthropic_error)
    async def CancelAnthropic(self, request, context) -> pb.AnthropicMessageBatch:
        return to_anthropic(await self._cancel(request, context, "CancelAnthropic", "anthropic"))

    @maps_errors(google_error)
    async def CancelGenAI(self, request, context) -> empty_pb2.Empty:
        await self._cancel(request, context, "CancelGenAI", "genai")
        return empty_pb2.Empty()

    @maps_errors(bedrock_error)
    async def StopModelInvocationJob(self, request, context) -> empty_pb2.Empty:
        await self._cancel(request, context, "StopModelInvocationJob", "bedrock")
        return empty_pb2.Empty()
