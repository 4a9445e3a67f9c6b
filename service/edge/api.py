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
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from google.longrunning import operations_pb2
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_status import rpc_status
from opentelemetry import trace as otel_trace

from service.domain.errors import CODES, GatewayError, InvalidRequest, UpstreamUnavailable
from service.domain.model import CancelCommand, CancelResult
from service.edge.converters import error_to_status, event_outcome, event_to_proto, result_to_proto

# Headers (gRPC metadata) the edge reads to shape REST answers (gateway/errors.lua, generated from
# service.edge.envelope): the error body and status, and the NDJSON stream marker.
from service.edge.envelope import ERROR_BODY_HEADER, ERROR_STATUS_HEADER, REQUEST_TYPE, STREAM_HEADER
from service.edge.operation_proto import matching_command, operation_to_proto
from service.edge.routes import ORIGINAL_PATH_HEADER, WAITING_RPCS, RouteTable
from service.edge.status import grpc_code
from service.edge.surfaces import SURFACES, RenderedError, Surface, bifrost_error, rpc_renderer
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from service.infra.concurrency import current_lease
from service.infra.observability import (
    IN_FLIGHT,
    REQUEST_ID_HEADER,
    CallRecord,
    Outcome,
    Subject,
    activate,
    record_bulk,
    record_call,
    record_item,
    record_request,
    request_id,
    server_span,
)
from service.runtime.build import Runtime
from service.runtime.live import LiveConfig
from service.usecases.auth import Authenticator, CallerCheck
from service.usecases.bulk import BulkCanceller, check_wait
from service.usecases.context import CallContext
from service.usecases.operations import Operations

log = logging.getLogger(__name__)

# Generic in the stubs only (types-grpcio): the alias is a string, never evaluated.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
S = TypeVar("S")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

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
    drop_in = SURFACES.get(surface)
    return CancelCommand(
        batch_id=batch_id,
        provider=provider or (drop_in.default_provider if drop_in else ""),
        raw_response_requested=headers.get(RAW_RESPONSE_HEADER, "").lower() == "true",
        sdk_provider=drop_in.default_provider if drop_in else "",
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


def call_deadline(context: Context, headers: dict[str, str]) -> float | None:
    """The call's deadline (loop time, see CallContext): now plus its `time_budget`."""
    budget = time_budget(context.time_remaining(), headers)
    return None if budget is None else asyncio.get_running_loop().time() + budget


def through_edge(headers: dict[str, str]) -> bool:
    """Whether a call is a REST call transcoded by the edge (Envoy names its original path): only
    those get the edge's plumbing (the rendered error body and status, the NDJSON marker), which
    gateway/errors.lua consumes. Native gRPC callers, direct or through Envoy, never see it."""
    return ORIGINAL_PATH_HEADER in headers


async def abort(
    context: Context, failure: GatewayError, rendered: RenderedError | None, *extra: tuple[str, str]
) -> NoReturn:
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


def rest_error_metadata(method: str, error: GatewayError) -> tuple[tuple[str, str], ...]:
    """What `abort` sends the edge so that a REST caller of `method` (`/pkg.Service/Name`) reads
    `error` in its route's shape; for refusals made before the servicer runs (service.edge.wire)."""
    rendered = rpc_renderer(method.rsplit("/", 1)[-1])(error)
    return (*rendered.headers, (ERROR_BODY_HEADER, rendered.body), (ERROR_STATUS_HEADER, str(rendered.status)))


@dataclass(slots=True)
class Rpc:
    """One RPC in flight: its call (headers, caller, record, deadline), its command once known, and
    whether its initial metadata already went out (a stream's first event: an error after that can
    only be the status)."""

    call: CallContext
    echo_id: tuple[tuple[str, str], ...] = ()
    command: CancelCommand | None = None
    metadata_sent: bool = False
    # CancelMany: the final outcomes of its items by gRPC code name.
    outcomes: Counter[str] = field(default_factory=Counter)
    # CancelMatching: the name of the operation it started.
    operation: str = ""


def _finish_cancel(rpc: Rpc, record: CallRecord, request: Any, span: otel_trace.Span, outcome: Outcome) -> None:
    command = rpc.command
    if command is not None:
        span.set_attribute("batchgate.provider", command.provider)
    subject = Subject(command.provider, command.batch_id) if command else Subject("", getattr(request, "batch_id", ""))
    record_request(record, rpc.call.caller, subject, outcome)


def _finish_bulk(rpc: Rpc, record: CallRecord, request: Any, span: otel_trace.Span, outcome: Outcome) -> None:
    span.set_attribute("batchgate.items", len(request.batches))
    record_bulk(record, rpc.call.caller, len(request.batches), dict(rpc.outcomes), outcome)


def _cancel_route(headers: dict[str, str]) -> str:
    return route_label("", headers)  # the command names the surface later (command_from_proto)


def _bulk_route(headers: dict[str, str]) -> str:
    return "bulk" if ORIGINAL_PATH_HEADER in headers else "grpc"


# What an RPC reports once it ends (the call, its record, its request, its span, how it ended): its
# span's attributes, metrics, log line and audit events.
Finish = Callable[[Rpc, CallRecord, Any, otel_trace.Span, Outcome], None]


def operations_route(headers: dict[str, str]) -> str:
    """The route label of CancelMatching and the Operations calls: `operations` through the REST
    edge, else `grpc`."""
    return "operations" if ORIGINAL_PATH_HEADER in headers else "grpc"


def finish_call(rpc_name: str) -> Finish:
    """What CancelMatching and the Operations calls report once they end: their access line (no
    audit event: they cancel nothing themselves; each batch an operation settles has its own)."""

    def finish(rpc: Rpc, record: CallRecord, request: Any, span: otel_trace.Span, outcome: Outcome) -> None:
        span.set_attribute("batchgate.rpc", rpc_name)
        operation = (rpc.operation or getattr(request, "name", ""))[:100] or None
        record_call(record, rpc_name, rpc.call.caller, outcome, operation=operation)

    return finish


# A servicer method as written (it gets the RPC's `Rpc`) and as gRPC calls it.
Method = Callable[[S, Req, Context, Rpc], Awaitable[Resp]]
Handler = Callable[[S, Req, Context], Awaitable[Resp]]


def handles_rpc(
    render: Callable[[GatewayError], RenderedError] = bifrost_error,
    finish: Finish | None = _finish_cancel,
    route: Callable[[dict[str, str]], str] = _cancel_route,
    request_type: str = REQUEST_TYPE,
) -> Callable[[Method[S, Req, Resp]], Handler[S, Req, Resp]]:
    """Decorates an RPC of the service, the one place for what every call needs (in the style of
    kserve's exception-to-status interceptor): request id, span, in-flight gauge and, once it ends,
    `finish` (metrics, log line, audit). A raised GatewayError becomes its gRPC status plus, for the
    REST edge, the error rendered by `render` (the route's own shape); anything unexpected becomes
    INTERNAL with details hidden (logged here, with the traceback). Without `finish` (Health) the
    call is not observed, only its errors mapped. `request_type`: what its errors' `extra_fields`
    say the call was ("" for an RPC that is not a cancel)."""

    def decorate(method: Method[S, Req, Resp]) -> Handler[S, Req, Resp]:
        name = method.__name__

        @functools.wraps(method)
        async def wrapper(self: S, request: Req, context: Context) -> Resp:
            headers = metadata_headers(context.invocation_metadata())
            deadline = call_deadline(context, headers)
            record: CallRecord | None = None
            span: otel_trace.Span = otel_trace.INVALID_SPAN
            if finish is None:
                rpc = Rpc(CallContext(headers, deadline=deadline))
            else:
                rid, generated = request_id(headers)
                echo_id = ((REQUEST_ID_HEADER, rid),) if generated else ()
                record = CallRecord(rid, route(headers))
                rpc = Rpc(CallContext(headers, record, deadline=deadline), echo_id)
                IN_FLIGHT.inc()
                span = server_span(name, headers, rid)
            code, status = "OK", 200
            failure: GatewayError | None = None
            try:
                with activate(span):
                    response = await method(self, request, context, rpc)
                if rpc.echo_id and not rpc.metadata_sent:
                    await context.send_initial_metadata(rpc.echo_id)
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
                if finish is not None and record is not None:
                    IN_FLIGHT.dec()
                    if failure is not None:
                        code, status = grpc_code(failure).name, failure.status_code
                    span.set_attribute("rpc.grpc.status_code", code)
                    finish(rpc, record, request, span, Outcome(code, status, failure.message if failure else None))
                    span.end()
            assert failure is not None  # an answer returned and CancelledError re-raised: only failures get here
            if request_type != REQUEST_TYPE:
                failure.request_type = request_type
            if rpc.metadata_sent:  # events already went out: only the status can still say it
                await context.abort_with_status(rpc_status.to_status(error_to_status(failure)))
            await abort(context, failure, render(failure) if through_edge(headers) else None, *rpc.echo_id)

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


DropIn = Callable[["BatchServicer", pb.CancelBatchRequest, Context], Awaitable[Message]]


def _drop_in(surface: Surface) -> DropIn:
    """The servicer method of a drop-in API's RPC: a cancel through its route, answered in its shape."""

    async def method(servicer: BatchServicer, request: pb.CancelBatchRequest, context: Context, rpc: Rpc) -> Message:
        return surface.answer(await servicer._cancel(request, rpc, surface.rpc, surface.name))

    method.__name__ = method.__qualname__ = surface.rpc
    return handles_cancel(surface.render)(method)


class BatchServicer(pb_grpc.BatchServiceServicer):
    """Thin methods: convert in, run the use case, convert out. `live` is the config this worker
    runs (it can change under a running server: service.runtime.live)."""

    def __init__(self, live: LiveConfig, operations: Operations | None = None) -> None:
        self.live = live
        # Long-running operations (CancelMatching; their progress is read with the Operations
        # service); None: this servicer does not run them.
        self.operations = operations
        self._bulk = BulkCanceller()
        self.draining = False

    @property
    def draining(self) -> bool:
        """True once shutdown began (health says so); waiting calls then answer with what they know."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        if value:  # shared by every runtime: waits under an older config end too
            self.live.factory.waiting.stop()

    def _current_auth(self) -> Authenticator:
        return self.live.current.canceller.auth

    def _long_call(self, runtime: Runtime, call: CallContext, batches: int) -> None:
        """Takes the long-call share of a bulk or waiting call (429 when its caller or the process
        holds too much: service.infra.concurrency), and has it check its caller against the current
        config before each upstream call (a revoked key ends it)."""
        lease = current_lease.get()
        if lease is not None:
            lease.long_call(batches, runtime.config.client.limits)
        call.access = CallerCheck(call.headers, self._current_auth)

    async def _cancel(
        self, request: pb.CancelBatchRequest, rpc: Rpc, method: str, surface: str | None = None
    ) -> CancelResult:
        call = rpc.call
        rpc.command = command_from_proto(request, call.headers, method, surface, call.record)
        if method in WAITING_RPCS:
            check_wait(request.wait_seconds)
            rpc.command = replace(rpc.command, wait_seconds=request.wait_seconds)
        # The config current now serves this call to its end, whatever reloads meanwhile.
        with self.live.current as runtime:
            if rpc.command.wait_seconds > 0:
                self._long_call(runtime, call, 1)
            return await runtime.canceller.cancel(rpc.command, call)

    @handles_cancel()
    async def Cancel(self, request: pb.CancelBatchRequest, context: Context, rpc: Rpc) -> pb.BatchCancelResponse:
        result = await self._cancel(request, rpc, "Cancel")
        # The OpenAI-compatible routes (their caller speaks OpenAI's SDK) answer OpenAI's Batch: the
        # fields the provider reported, too.
        openai = rpc.command is not None and rpc.command.sdk_provider == SURFACES["openai"].default_provider
        return result_to_proto(result, openai=openai)

    # The drop-in SDK routes: each RPC answers in its API's shape, errors included (service.edge.surfaces).
    CancelAnthropic = _drop_in(SURFACES["anthropic"])
    CancelGenAI = _drop_in(SURFACES["genai"])
    StopModelInvocationJob = _drop_in(SURFACES["bedrock"])

    @handles_rpc(finish=_finish_bulk, route=_bulk_route)
    async def CancelMany(self, request: pb.CancelManyRequest, context: Context, rpc: Rpc) -> None:
        """Streams each item's events as they happen. Errors of the whole call (bounds, credentials)
        end it before any event, with the single cancel's error shape and status; an item's error
        is its own event."""
        call = rpc.call
        # The config current now serves the whole stream, whatever reloads meanwhile.
        with self.live.current as runtime:
            bulk = self._bulk.prepare(
                runtime.canceller,
                [(item.id, item.provider) for item in request.batches],
                request.wait_seconds,
                call,
                raw_response_requested=call.headers.get(RAW_RESPONSE_HEADER, "").lower() == "true",
            )
            self._long_call(runtime, call, len(bulk.items))
            stream = ((STREAM_HEADER, "ndjson"),) if through_edge(call.headers) else ()
            if rpc.echo_id or stream:
                await context.send_initial_metadata((*rpc.echo_id, *stream))
            rpc.metadata_sent = True
            async with contextlib.aclosing(self._bulk.run(bulk)) as events:
                async for event in events:
                    await context.write(event_to_proto(event))
                    if event.final and call.record is not None:
                        item_code, item_status = event_outcome(event)
                        rpc.outcomes[item_code] += 1
                        warning = event.result.warning if event.result is not None else None
                        record_item(
                            call.record,
                            call.caller,
                            Subject(event.provider, event.batch_id, event.index),
                            Outcome(item_code, item_status, warning=warning),
                        )

    @handles_rpc(finish=finish_call("CancelMatching"), route=operations_route)
    async def CancelMatching(
        self, request: pb.CancelMatchingRequest, context: Context, rpc: Rpc
    ) -> operations_pb2.Operation:
        """Starts an operation that cancels every batch matching the selector (or the named ones)
        and answers with it at once (`done` false); its progress is read with the Operations
        service. Bad input, refused access and limits end the call before anything is listed."""
        if self.operations is None:
            raise GatewayError("operations are not served here", status_code=501, code="unimplemented")
        operation = await self.operations.start(matching_command(request), rpc.call)
        rpc.operation = operation.name
        return operation_to_proto(operation, None)

    @handles_rpc(render_health, finish=None, request_type="")
    async def Health(self, request: pb.HealthRequest, context: Context, rpc: Rpc) -> pb.HealthResponse:
        """`GET /health`: ok, or 503 `draining` once shutdown began; circuit state per provider; the
        rate-limit store's state (a failing store degrades limits, not the service: still 200); the
        config version this worker and its sibling workers run."""
        live = self.live
        breakers = live.current.canceller.breaker_states()
        providers = {name: pb.ProviderHealth(circuit=state) for name, state in breakers.items()}
        limiter = live.limiter
        store = pb.RateLimitStoreHealth(type=limiter.store.kind, state=await limiter.health())
        health = pb.HealthResponse(
            status="draining" if self.draining else "ok",
            providers=providers,
            rate_limit_store=store,
            config=pb.ConfigState(**live.state()),
            workers=[pb.ConfigState(**state) for state in live.workers()],
            operations_running=self.operations.running() if self.operations is not None else 0,
        )
        if self.draining:
            raise Draining(health)
        return health
