"""The gRPC face of the use case: a thin servicer, its proto<->domain converters, and the one
place where errors become gRPC statuses."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

import grpc
from google.longrunning import operations_pb2
from google.protobuf import empty_pb2, json_format
from grpc_status import rpc_status
from opentelemetry import trace as otel_trace

from service.domain.errors import CODES, GatewayError, InvalidRequest, UpstreamUnavailable
from service.domain.model import CancelCommand, CancelResult
from service.edge.converters import error_to_status, event_outcome, event_to_proto, result_to_proto

# Headers (gRPC metadata) the edge reads to shape REST answers (gateway/errors.lua, generated from
# service.edge.envelope): the error body and status, and the NDJSON stream marker.
from service.edge.envelope import ERROR_BODY_HEADER, ERROR_STATUS_HEADER, REQUEST_TYPE, STREAM_HEADER
from service.edge.operation_proto import matching_command, operation_to_proto
from service.edge.routes import ORIGINAL_PATH_HEADER, RouteTable
from service.edge.status import grpc_code
from service.edge.surfaces import (
    SURFACE_DEFAULT_PROVIDER,
    RenderedError,
    anthropic_error,
    bedrock_error,
    bifrost_error,
    google_error,
    to_anthropic,
)
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from service.infra.observability import (
    IN_FLIGHT,
    REQUEST_ID_HEADER,
    CallRecord,
    activate,
    record_bulk,
    record_call,
    record_item,
    record_request,
    request_id,
    server_span,
)
from service.runtime.live import LiveConfig
from service.usecases.bulk import BulkCanceller, check_wait
from service.usecases.cancel import Canceller
from service.usecases.context import CallContext
from service.usecases.operations import Operations

log = logging.getLogger(__name__)

RAW_RESPONSE_HEADER = "x-bf-send-back-raw-response"

MODEL_PROVIDER_HEADER = "x-model-provider"
EXPECTED_TIMEOUT_HEADER = "x-envoy-expected-rq-timeout-ms"

_METHODS = pb.DESCRIPTOR.services_by_name["BatchService"].methods_by_name
ROUTES = {name: RouteTable(method) for name, method in _METHODS.items()}


def metadata_headers(metadata: Any) -> dict[str, str]:
    """Request headers from gRPC metadata (binary `-bin` entries are not headers we read)."""
    return {key: value for key, value in metadata or () if not key.endswith("-bin")}


def route_label(surface: str, headers: dict[str, str]) -> str:
    """The route a call came through, for metrics and logs: the REST surface, or `grpc`."""
    if ORIGINAL_PATH_HEADER not in headers:
        return "grpc"
    return surface or "native"


def command_from_proto(
    request: pb.CancelBatchRequest,
    metadata: Any,
    method: str = "Cancel",
    surface: str | None = None,
    record: CallRecord | None = None,
) -> CancelCommand:
    """The domain command for one call of `method`. `surface` is fixed by the drop-in RPCs; for
    `Cancel` it comes from the route (REST) or the request (gRPC). The call's record learns its route."""
    headers = metadata if isinstance(metadata, dict) else metadata_headers(metadata)
    batch_id = request.batch_id
    if surface is None:
        surface = request.surface
    original_path = headers.get(ORIGINAL_PATH_HEADER)
    if original_path is not None:
        # A REST call: only the path may set the batch id and the surface (see service.edge.routes).
        route = ROUTES[method].path_values(original_path)
        if route is None:
            # A spelling the transcoder accepts but the route does not name (`.../x:cancel` on a
            # route without a verb): nothing says which batch the caller's path meant.
            raise no_route(original_path)
        if route["batch_id"] != batch_id:
            raise InvalidRequest("batch_id must be given in the URL path only", param="batch_id")
        surface = route["surface"]
    provider = (request.provider or headers.get(MODEL_PROVIDER_HEADER, "")).strip().lower()
    if record is not None:
        record.route = route_label(surface, headers)
    return CancelCommand(
        batch_id=batch_id,
        provider=provider or SURFACE_DEFAULT_PROVIDER.get(surface, ""),
        raw_response_requested=headers.get(RAW_RESPONSE_HEADER, "").lower() == "true",
        surface=surface or "",
    )


def no_route(original_path: str) -> GatewayError:
    """The same 404 the edge answers for a path it has no route for."""
    path = original_path.split("?", 1)[0]
    if len(path) > 200:
        path = path[:200] + "..."
    error = GatewayError(
        f"no route for POST {path}", status_code=404, type=CODES["route_not_found"].type, code="route_not_found"
    )
    error.request_type = ""  # no route, no cancel
    return error


def time_budget(grpc_remaining: float | None, headers: dict[str, str]) -> float | None:
    """Seconds the call may take: the gRPC deadline, or for REST calls the route timeout Envoy
    announces in `x-envoy-expected-rq-timeout-ms`, whichever is shorter (None: no limit here)."""
    expected = headers.get(EXPECTED_TIMEOUT_HEADER, "")
    if expected.isascii() and expected.isdigit():
        edge = int(expected) / 1000
        return edge if grpc_remaining is None else min(edge, grpc_remaining)
    return grpc_remaining


def through_edge(headers: dict[str, str]) -> bool:
    """Whether a call is a REST call transcoded by the edge (Envoy names its original path): only
    those get the edge's plumbing (the rendered error body and status, the NDJSON marker), which
    gateway/errors.lua consumes. Native gRPC callers, direct or through Envoy, never see it."""
    return ORIGINAL_PATH_HEADER in headers


async def abort(
    context: grpc.aio.ServicerContext, failure: GatewayError, rendered: RenderedError | None, *extra
) -> None:
    """Ends the call with the failure's gRPC status (typed ErrorDetail attached); for a REST call
    (`rendered`), the REST rendering goes in initial metadata for the edge (gateway/errors.lua)."""
    plumbing = (
        ()
        if rendered is None
        else (*rendered.headers, (ERROR_BODY_HEADER, rendered.body), (ERROR_STATUS_HEADER, str(rendered.status)))
    )
    metadata = (*extra, *failure.headers.items(), *plumbing)
    if metadata:
        await context.send_initial_metadata(metadata)
    await context.abort_with_status(rpc_status.to_status(error_to_status(failure)))


# The error shape of each RPC's REST routes (the drop-in surfaces answer in their provider's).
_REST_RENDERERS = {
    "CancelAnthropic": anthropic_error,
    "CancelGenAI": google_error,
    "StopModelInvocationJob": bedrock_error,
}


def rest_error_metadata(method: str, error: GatewayError) -> tuple[tuple[str, str], ...]:
    """What `abort` sends the edge so that a REST caller of `method` (`/pkg.Service/Name`) reads
    `error` in its route's shape; for refusals made before the servicer runs (service.edge.wire)."""
    rendered = _REST_RENDERERS.get(method.rsplit("/", 1)[-1], bifrost_error)(error)
    return (*rendered.headers, (ERROR_BODY_HEADER, rendered.body), (ERROR_STATUS_HEADER, str(rendered.status)))


@dataclass(slots=True)
class Call:
    """One RPC in flight: its context (headers, caller, record), its command once known, and
    whether its initial metadata already went out (a stream's first event: an error after that can
    only be the status)."""

    context: CallContext
    echo_id: tuple[tuple[str, str], ...] = ()
    command: CancelCommand | None = None
    metadata_sent: bool = False
    # CancelMany: the final outcomes of its items by gRPC code name.
    outcomes: Counter = field(default_factory=Counter)
    # CancelMatching: the name of the operation it started.
    operation: str = ""


def _finish_cancel(call: Call, request: Any, span: Any, code: str, status: int, failure: GatewayError | None) -> None:
    command = call.command
    if command is not None:
        span.set_attribute("batchgate.provider", command.provider)
    record_request(
        call.context.record,
        provider=command.provider if command else "",
        batch_id=command.batch_id if command else getattr(request, "batch_id", ""),
        caller=call.context.caller,
        code=code,
        http_status=status,
        error=failure.message if failure is not None else None,
    )


def _finish_bulk(call: Call, request: Any, span: Any, code: str, status: int, failure: GatewayError | None) -> None:
    span.set_attribute("batchgate.items", len(request.batches))
    record_bulk(
        call.context.record,
        caller=call.context.caller,
        items=len(request.batches),
        outcomes=dict(call.outcomes),
        code=code,
        http_status=status,
        error=failure.message if failure is not None else None,
    )


def _cancel_route(headers: dict[str, str]) -> str:
    return route_label("", headers)  # the command names the surface later (command_from_proto)


def _bulk_route(headers: dict[str, str]) -> str:
    return "bulk" if ORIGINAL_PATH_HEADER in headers else "grpc"


# What an RPC reports once it ends: its span's attributes, metrics, log line and audit events.
Finish = Callable[[Call, Any, Any, str, int, "GatewayError | None"], None]


def operations_route(headers: dict[str, str]) -> str:
    """The route label of CancelMatching and the Operations calls: `operations` through the REST
    edge, else `grpc`."""
    return "operations" if ORIGINAL_PATH_HEADER in headers else "grpc"


def finish_call(rpc: str) -> Finish:
    """What CancelMatching and the Operations calls report once they end: their access line (no
    audit event: they cancel nothing themselves; each batch an operation settles has its own)."""

    def finish(call: Call, request: Any, span: Any, code: str, status: int, failure: GatewayError | None) -> None:
        span.set_attribute("batchgate.rpc", rpc)
        record_call(
            call.context.record,
            rpc=rpc,
            caller=call.context.caller,
            code=code,
            http_status=status,
            error=failure.message if failure is not None else None,
            operation=(call.operation or getattr(request, "name", ""))[:100] or None,
        )

    return finish


def handles_rpc(
    render: Callable[[GatewayError], RenderedError] = bifrost_error,
    finish: Finish | None = _finish_cancel,
    route: Callable[[dict[str, str]], str] = _cancel_route,
    request_type: str = REQUEST_TYPE,
):
    """Decorates an RPC of the service, the one place for what every call needs (in the style of
    kserve's exception-to-status interceptor): request id, span, in-flight gauge and, once it ends,
    `finish` (metrics, log line, audit). A raised GatewayError becomes its gRPC status plus, for the
    REST edge, the error rendered by `render` (the route's own shape); anything unexpected becomes
    INTERNAL with details hidden (logged here, with the traceback). Without `finish` (Health) the
    call is not observed, only its errors mapped. `request_type`: what its errors' `extra_fields`
    say the call was ("" for an RPC that is not a cancel)."""

    def decorate(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        name = method.__name__

        @functools.wraps(method)
        async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            headers = metadata_headers(context.invocation_metadata())
            if finish is None:
                call, span = Call(CallContext(headers)), otel_trace.INVALID_SPAN
            else:
                rid, generated = request_id(headers)
                echo_id = ((REQUEST_ID_HEADER, rid),) if generated else ()
                call = Call(CallContext(headers, CallRecord(rid, route(headers))), echo_id)
                IN_FLIGHT.inc()
                span = server_span(name, headers, rid)
            code, status, failure = "OK", 200, None
            try:
                with activate(span):
                    response = await method(self, request, context, call)
                if call.echo_id and not call.metadata_sent:
                    await context.send_initial_metadata(call.echo_id)
                return response
            except GatewayError as error:
                failure = error
            except asyncio.CancelledError:
                code, status = "CANCELLED", 499  # the caller went away; upstream work stops with us
                raise
            except Exception:
                log.exception("unexpected error in %s", name)
                failure = GatewayError("internal error")
            finally:
                if finish is not None:
                    IN_FLIGHT.dec()
                    if failure is not None:
                        code, status = grpc_code(failure).name, failure.status_code
                    span.set_attribute("rpc.grpc.status_code", code)
                    finish(call, request, span, code, status, failure)
                    span.end()
            if request_type != REQUEST_TYPE:
                failure.request_type = request_type
            if call.metadata_sent:  # events already went out: only the status can still say it
                await context.abort_with_status(rpc_status.to_status(error_to_status(failure)))
            await abort(context, failure, render(failure) if through_edge(headers) else None, *call.echo_id)

        return wrapper

    return decorate


# The cancel RPCs' decorator: observed as a cancel (log line, audit event), errors in `render`'s shape.
handles_cancel = handles_rpc


class Draining(UpstreamUnavailable):
    """Health while shutting down: 503 `draining`, its REST body the health answer itself."""

    def __init__(self, health: pb.HealthResponse) -> None:
        super().__init__("the service is shutting down", status_code=503, code="draining")
        self.health = health


def render_health(failure: GatewayError) -> RenderedError:
    """`GET /health`'s error body: the health answer while draining, else the usual error body."""
    if not isinstance(failure, Draining):
        return bifrost_error(failure)
    body = json_format.MessageToJson(failure.health, preserving_proto_field_name=True, indent=None, ensure_ascii=True)
    return RenderedError(503, body)


class BatchServicer(pb_grpc.BatchServiceServicer):
    """Thin methods: convert in, run the use case, convert out."""

    def __init__(self, live: LiveConfig | Canceller, operations: Operations | None = None) -> None:
        # The config can change under a running server (service.runtime.live); a bare Canceller never does.
        self._live = live if isinstance(live, LiveConfig) else LiveConfig(live.config, canceller=live)
        self._bulk = BulkCanceller()
        # Long-running operations (CancelMatching); None: this servicer does not run them.
        self._operations = operations
        self.draining = False

    @property
    def draining(self) -> bool:
        """True once shutdown began (health says so); waiting calls then answer with what they know."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        if value:  # shared by every runtime: waits under an older config end too
            self._live.current.canceller.stopping.set()

    async def _cancel(self, request, context, call: Call, method: str, surface: str | None = None) -> CancelResult:
        headers = call.context.headers
        call.command = command_from_proto(request, headers, method, surface, call.context.record)
        if method == "Cancel":
            check_wait(request.wait_seconds)
            call.command = replace(call.command, wait_seconds=request.wait_seconds)
        # The config current now serves this call to its end, whatever reloads meanwhile.
        with self._live.current as runtime:
            return await runtime.canceller.cancel(
                call.command, call.context, time_budget(context.time_remaining(), headers)
            )

    @handles_cancel()
    async def Cancel(self, request: pb.CancelBatchRequest, context, call: Call) -> pb.BatchCancelResponse:
        result = await self._cancel(request, context, call, "Cancel")
        # The OpenAI-compatible routes answer OpenAI's Batch: the fields the provider reported, too.
        return result_to_proto(result, openai=call.command is not None and call.command.surface == "openai")

    @handles_cancel(anthropic_error)
    async def CancelAnthropic(self, request, context, call: Call) -> pb.AnthropicMessageBatch:
        return to_anthropic(await self._cancel(request, context, call, "CancelAnthropic", "anthropic"))

    @handles_cancel(google_error)
    async def CancelGenAI(self, request, context, call: Call) -> empty_pb2.Empty:
        await self._cancel(request, context, call, "CancelGenAI", "genai")
        return empty_pb2.Empty()

    @handles_cancel(bedrock_error)
    async def StopModelInvocationJob(self, request, context, call: Call) -> empty_pb2.Empty:
        await self._cancel(request, context, call, "StopModelInvocationJob", "bedrock")
        return empty_pb2.Empty()

    @handles_rpc(finish=_finish_bulk, route=_bulk_route)
    async def CancelMany(self, request: pb.CancelManyRequest, context: grpc.aio.ServicerContext, call: Call) -> None:
        """Streams each item's events as they happen. Errors of the whole call (bounds, credentials)
        end it before any event, with the single cancel's error shape and status; an item's error
        is its own event."""
        headers = call.context.headers
        # The config current now serves the whole stream, whatever reloads meanwhile.
        with self._live.current as runtime:
            bulk = self._bulk.prepare(
                runtime.canceller,
                [(item.id, item.provider) for item in request.batches],
                request.wait_seconds,
                call.context,
                raw_response_requested=headers.get(RAW_RESPONSE_HEADER, "").lower() == "true",
            )
            stream = ((STREAM_HEADER, "ndjson"),) if through_edge(headers) else ()
            if call.echo_id or stream:
                await context.send_initial_metadata((*call.echo_id, *stream))
            call.metadata_sent = True
            budget = time_budget(context.time_remaining(), headers)
            async with contextlib.aclosing(self._bulk.run(bulk, budget)) as events:
                async for event in events:
                    await context.write(event_to_proto(event))
                    if event.final:
                        item_code, item_status = event_outcome(event)
                        call.outcomes[item_code] += 1
                        warning = event.result.warning if event.result is not None else None
                        record_item(
                            call.context.record,
                            index=event.index,
                            provider=event.provider,
                            batch_id=event.batch_id,
                            caller=call.context.caller,
                            code=item_code,
                            http_status=item_status,
                            warning=warning,
                        )

    @handles_rpc(finish=finish_call("CancelMatching"), route=operations_route)
    async def CancelMatching(
        self, request: pb.CancelMatchingRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> operations_pb2.Operation:
        """Starts an operation that cancels every batch matching the selector (or the named ones)
        and answers with it at once (`done` false); its progress is read with the Operations
        service. Bad input, refused access and limits end the call before anything is listed."""
        if self._operations is None:
            raise GatewayError("operations are not served here", status_code=501, code="unimplemented")
        operation = await self._operations.start(matching_command(request), call.context)
        call.operation = operation.name
        return operation_to_proto(operation, None)

    @handles_rpc(render_health, finish=None, request_type="")
    async def Health(
        self, request: pb.HealthRequest, context: grpc.aio.ServicerContext, call: Call
    ) -> pb.HealthResponse:
        """`GET /health`: ok, or 503 `draining` once shutdown began; circuit state per provider; the
        rate-limit store's state (a failing store degrades limits, not the service: still 200); the
        config version this worker and its sibling workers run."""
        live = self._live
        breakers = live.current.canceller.breaker_states()
        providers = {name: pb.ProviderHealth(circuit=state) for name, state in breakers.items()}
        limiter = live.limiter
        parts = {
            "providers": providers,
            "rate_limit_store": pb.RateLimitStoreHealth(type=limiter.store.kind, state=await limiter.health()),
            "config": pb.ConfigState(**live.state()),
            "workers": [pb.ConfigState(**state) for state in live.workers()],
            "operations_running": self._operations.running() if self._operations is not None else 0,
        }
        if self.draining:
            raise Draining(pb.HealthResponse(status="draining", **parts))
        return pb.HealthResponse(status="ok", **parts)
