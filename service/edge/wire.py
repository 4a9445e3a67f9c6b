"""Every gRPC call ends promptly with a status, whatever bytes it carried.

grpc.aio mishandles two kinds of malformed calls to methods that take one request message:
- when no complete message arrives before the caller half-closes (an empty stream, a length
  prefix longer than the data that follows), it takes the call for cancelled and returns without
  answering: the caller waits for its own deadline, or forever;
- a message that does not parse is logged with a traceback per call and answered UNKNOWN
  "Unexpected <class 'google.protobuf.message.DecodeError'>: ...".

So each such method is registered as a request-streaming one that reads its one message itself
(`context.read()` costs what the unary path costs): no complete message, or one that does not parse,
is INVALID_ARGUMENT with a plain message and one log line; a message that stops arriving midway
is DEADLINE_EXCEEDED after `Reading.timeout_s` (REQUEST_READ_TIMEOUT_SECONDS). Request-streaming
methods (reflection) get the same treatment for each message they read (without the timeout: a
stream may idle).

Before any message is read, every call (every method) passes the door:
- its metadata: a value that is not printable ASCII (what gRPC metadata allows; Envoy refuses the
  same at the edge) is INVALID_ARGUMENT naming the header, never its value. grpc-python itself
  logs a value that is not UTF-8 with a traceback (`quiet_grpc_metadata_log` keeps that out);
- its caller's share (`Reading.admit`, service.infra.concurrency): over its limit, 429
  `too_many_concurrent_calls` at once. The lease is held until the call ends, and is the call's
  `current_lease` meanwhile (a long call takes more from it).

Use `StrictRegistrar(server, reading)` in place of the server when calling generated `add_*_to_server`.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError

from service.config.settings import DEFAULTS
from service.domain.errors import GatewayError, InvalidRequest
from service.edge.routes import ORIGINAL_PATH_HEADER
from service.edge.status import grpc_code
from service.infra.concurrency import Lease, current_lease
from service.infra.observability import REQUEST_ID_HEADER, request_id

log = logging.getLogger("batchgate.access")

# Generic in the stubs only (types-grpcio): the aliases are strings, never evaluated.
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

# The largest request message the service reads (gRPC's own limit, set in service/edge/server.py).
MAX_MESSAGE_BYTES = 1 << 20

# (method, error) -> initial metadata that has the REST edge answer in the route's own shape.
RestRendering = Callable[[str, GatewayError], tuple[tuple[str, str], ...]]
# (method, headers, peer) -> the call's lease on its caller's share; raises GatewayError (429).
Admit = Callable[[str, dict[str, str], str], Lease]


@dataclass(frozen=True, slots=True)
class Reading:
    """How calls are read: `timeout_s` for a request message to arrive (Envoy holds a request until
    it is whole for as long, see gateway/envoy.yaml.tmpl: a caller that stops sending mid-message
    is answered, not waited for), `rest`, which renders a refusal for REST callers of the methods
    with REST routes, and `admit`, which takes each call's lease on its caller's share (None: no
    per-caller bounds, only for the benchmark's comparison)."""

    timeout_s: float = DEFAULTS.request_read_timeout_seconds
    rest: RestRendering | None = None
    admit: Admit | None = None


def unprintable_header(metadata: Any) -> str | None:
    """The name of the first metadata entry whose value gRPC metadata cannot carry (`-bin` values
    are bytes, and free), or None."""
    for key, value in metadata or ():
        if not key.endswith("-bin") and not (isinstance(value, str) and value.isascii() and value.isprintable()):
            return str(key)
    return None


class _QuietMetadataLog(logging.Filter):
    """grpc-python logs `Invalid encoding on <the raw value>` with a traceback, at error level,
    for each metadata value that is not UTF-8 (a header value can be a key); the door refuses such
    a call with a line of its own that names only the header."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith("Invalid encoding on"))


def quiet_grpc_metadata_log() -> None:
    """Keeps grpc-python's log of undecodable metadata values (and their values) out of the logs."""
    cygrpc_log = logging.getLogger("grpc._cython.cygrpc")
    if not any(isinstance(f, _QuietMetadataLog) for f in cygrpc_log.filters):
        cygrpc_log.addFilter(_QuietMetadataLog())


class _Reader:
    """Reads the request messages of one method, ending the call when they are not there."""

    def __init__(self, method: str, deserializer: Callable[[bytes], Any] | None, reading: Reading) -> None:
        self.method = method
        message_type = getattr(getattr(getattr(deserializer, "__self__", None), "DESCRIPTOR", None), "full_name", "")
        self.malformed = f"the request is not a valid {message_type or 'request'} message"
        self.reading = reading

    async def door(self, context: Context) -> Lease | None:
        """The call's checks before its message (see the module docstring): its lease, if any."""
        metadata = context.invocation_metadata()
        bad = unprintable_header(metadata)
        if bad is not None:
            message = f"header '{bad[:64]}' has a value that is not printable ASCII"
            await self.refuse(context, InvalidRequest(message))
        admit = self.reading.admit
        if admit is None:
            return None
        headers = {key: value for key, value in metadata or () if isinstance(value, str)}
        try:
            lease = admit(self.method, headers, context.peer())
        except GatewayError as error:  # logged (at most every few seconds) by the limiter, not here
            await self.refuse(context, error, logged=False)
        current_lease.set(lease)
        return lease

    async def one(self, context: Context) -> Any:
        """The call's request message."""
        try:
            async with asyncio.timeout(self.reading.timeout_s):  # no extra task, unlike wait_for
                request = await context.read()
        except TimeoutError:
            late = f"the request did not arrive within {self.reading.timeout_s:g} s"
            await self.refuse(
                context, GatewayError(late, status_code=408, type="invalid_request_error", code="request_timeout")
            )
        except DecodeError:
            await self.refuse(context, InvalidRequest(self.malformed))
        if request is grpc.aio.EOF:
            await self.refuse(context, InvalidRequest("the call ended without a complete request message"))
        return request

    async def each(self, context: Context) -> AsyncIterator[Any]:
        """The call's request messages, until the caller half-closes."""
        while True:
            try:
                request = await context.read()
            except DecodeError:
                await self.refuse(context, InvalidRequest(self.malformed))
            if request is grpc.aio.EOF:
                return
            yield request

    async def refuse(self, context: Context, error: GatewayError, logged: bool = True) -> None:
        """Ends the call with the error's status and logs one line (no traceback: the caller is at
        fault; `logged` False: none). A REST caller (a transcoded call) gets it in its route's shape."""
        headers = {
            key: value
            for key, value in context.invocation_metadata() or ()
            if not key.endswith("-bin") and isinstance(value, str)
        }
        rid, generated = request_id(headers)
        code = grpc_code(error)
        if logged and log.isEnabledFor(logging.INFO):
            log.info(
                "malformed call",
                extra={
                    "fields": {
                        "request_id": rid,
                        "route": "grpc",
                        "method": self.method,
                        "outcome": code.name,
                        "status": error.status_code,
                        "error": error.message,
                    }
                },
            )
        metadata: tuple[tuple[str, str], ...] = ((REQUEST_ID_HEADER, rid),) if generated else ()
        metadata += tuple(error.headers.items())
        rest = self.reading.rest
        if rest is not None:
            metadata += rest(self.method, error) if ORIGINAL_PATH_HEADER in headers else ()
        if metadata:
            await context.send_initial_metadata(metadata)
        await context.abort(code, error.message)


def strict(handler: Handler, method: str, reading: Reading) -> Handler:
    """The same method (`/package.Service/Method`), reading its requests itself (see the module
    docstring); it answers as the original does."""
    reader = _Reader(method, handler.request_deserializer, reading)
    codec = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    # The stubs type a handler's behaviours for the synchronous server; a grpc.aio server's are
    # coroutine functions (or async generators) taking a grpc.aio context.
    behavior: Any
    if handler.unary_unary is not None:
        behavior = handler.unary_unary

        async def unary(requests: Any, context: Context) -> Any:
            lease = await reader.door(context)
            try:
                return await behavior(await reader.one(context), context)
            finally:
                if lease is not None:
                    lease.release()

        return grpc.stream_unary_rpc_method_handler(unary, **codec)
    if handler.unary_stream is not None:
        behavior, streaming = handler.unary_stream, grpc.stream_stream_rpc_method_handler

        async def requests_of(context: Context) -> Any:
            return await reader.one(context)

    else:
        behavior = handler.stream_unary or handler.stream_stream
        streaming = grpc.stream_stream_rpc_method_handler
        if handler.stream_unary is not None:
            streaming = grpc.stream_unary_rpc_method_handler

        async def requests_of(context: Context) -> Any:
            return reader.each(context)

    # A streaming answer is an async generator, or a coroutine that writes with `context.write`.
    if inspect.isasyncgenfunction(behavior):

        async def generate(requests: Any, context: Context) -> AsyncIterator[Any]:
            lease = await reader.door(context)
            try:
                async for response in behavior(await requests_of(context), context):
                    yield response
            finally:
                if lease is not None:
                    lease.release()

        return streaming(generate, **codec)

    async def call(requests: Any, context: Context) -> Any:
        lease = await reader.door(context)
        try:
            return await behavior(await requests_of(context), context)
        finally:
            if lease is not None:
                lease.release()

    return streaming(call, **codec)


class _StrictGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler, reading: Reading) -> None:
        self._inner, self._reading = inner, reading
        self._strict: dict[Handler, Handler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Handler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        if handler not in self._strict:
            self._strict[handler] = strict(handler, handler_call_details.method, self._reading)
        return self._strict[handler]


class StrictRegistrar:
    """Stands in for the server while generated `add_*_to_server` functions register a servicer, so
    every method they register reads its requests strictly, as `reading` says."""

    def __init__(self, server: grpc.aio.Server, reading: Reading) -> None:
        self._server, self._reading = server, reading

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_StrictGenericHandler(h, self._reading) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Handler]) -> None:
        strict_handlers = {name: strict(h, f"/{service}/{name}", self._reading) for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, strict_handlers)
