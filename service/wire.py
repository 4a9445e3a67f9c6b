"""Every gRPC call ends promptly with a status, whatever bytes it carried.

grpc.aio mishandles two kinds of malformed calls to methods that take one request message:
- when no complete message arrives before the caller half-closes (an empty stream, a length
  prefix longer than the data that follows), it takes the call for cancelled and returns without
  answering: the caller waits for its own deadline, or forever;
- a message that does not parse is logged with a traceback per call and answered UNKNOWN
  "Unexpected <class 'google.protobuf.message.DecodeError'>: ...".

So each such method is registered as a request-streaming one that reads its one message itself
(`context.read()` costs what the unary path costs): no complete message, or one that does not parse,
is INVALID_ARGUMENT with a plain message and one log line. Request-streaming methods (reflection)
get the same treatment for each message they read.

Use `StrictRegistrar(server)` in place of the server when calling generated `add_*_to_server`.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, AsyncIterator, Callable

import grpc
from google.protobuf.message import DecodeError

from service.observability import REQUEST_ID_HEADER, request_id

log = logging.getLogger("batchgate.access")

NO_MESSAGE = "the call ended without a complete request message"


def _message_type(deserializer: Callable[[bytes], Any] | None) -> str:
    owner = getattr(deserializer, "__self__", None)
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return getattr(descriptor, "full_name", "request")


async def _refuse(context: grpc.aio.ServicerContext, method: str, message: str) -> None:
    """Ends the call with INVALID_ARGUMENT and logs one line (no traceback: the caller is at fault)."""
    headers = {key: value for key, value in context.invocation_metadata() or () if not key.endswith("-bin")}
    rid, generated = request_id(headers)
    if log.isEnabledFor(logging.INFO):
        log.info("malformed call", extra={"fields": {
            "request_id": rid, "route": "grpc", "method": method, "outcome": "INVALID_ARGUMENT", "status": 400,
            "error": message,
        }})
    if generated:
        await context.send_initial_metadata(((REQUEST_ID_HEADER, rid),))
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)


async def read_one(context: grpc.aio.ServicerContext, method: str, type_name: str) -> Any:
    """The call's request message, or the call ends with INVALID_ARGUMENT."""
    try:
        request = await context.read()
    except DecodeError:
        await _refuse(context, method, f"the request is not a valid {type_name} message")
    if request is grpc.aio.EOF:
        await _refuse(context, method, NO_MESSAGE)
    return request


def strict(handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
    """The same method (`/package.Service/Method`), reading its request itself (see the module
    docstring)."""
    checked = (method, _message_type(handler.request_deserializer))
    codec = {"request_deserializer": handler.request_deserializer, "response_serializer": handler.response_serializer}
    if handler.unary_unary is not None:
        behavior = handler.unary_unary

        async def unary_response(requests: Any, context: grpc.aio.ServicerContext) -> Any:
            return await behavior(await read_one(context, *checked), context)

        return grpc.stream_unary_rpc_method_handler(unary_response, **codec)
    if handler.unary_stream is not None:
        return grpc.stream_stream_rpc_method_handler(_one_request_streaming(handler.unary_stream, checked), **codec)
    behavior = handler.stream_unary or handler.stream_stream
    wrapped = _checked_stream(behavior, checked)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(wrapped, **codec)
    return grpc.stream_stream_rpc_method_handler(wrapped, **codec)


def _one_request_streaming(behavior: Callable, checked: tuple[str, str]) -> Callable:
    """A unary-request, streaming-response method that reads its request itself; it answers as the
    original does (an async generator, or a coroutine that writes with `context.write`)."""
    if inspect.isasyncgenfunction(behavior):

        async def generate(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in behavior(await read_one(context, *checked), context):
                yield response

        return generate

    async def write(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await behavior(await read_one(context, *checked), context)

    return write


def _checked_stream(behavior: Callable, checked: tuple[str, str]) -> Callable:
    """A request-streaming method whose request iterator ends the call on a message that does not parse."""

    async def messages(context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        while True:
            try:
                request = await context.read()
            except DecodeError:
                await _refuse(context, checked[0], f"the request is not a valid {checked[1]} message")
            if request is grpc.aio.EOF:
                return
            yield request

    if inspect.isasyncgenfunction(behavior):

        async def generate(requests: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async for response in behavior(messages(context), context):
                yield response

        return generate

    async def call(requests: Any, context: grpc.aio.ServicerContext) -> Any:
        return await behavior(messages(context), context)

    return call


class _StrictGenericHandler(grpc.GenericRpcHandler):
    def __init__(self, inner: grpc.GenericRpcHandler) -> None:
        self._inner = inner
        self._strict: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        handler = self._inner.service(handler_call_details)
        if handler is None:
            return None
        if handler not in self._strict:
            self._strict[handler] = strict(handler, handler_call_details.method)
        return self._strict[handler]


class StrictRegistrar:
    """Stands in for the server while generated `add_*_to_server` functions register a servicer, so
    every method they register reads its requests strictly."""

    def __init__(self, server: grpc.aio.Server) -> None:
        self._server = server

    def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
        self._server.add_generic_rpc_handlers(tuple(_StrictGenericHandler(h) for h in handlers))

    def add_registered_method_handlers(self, service: str, handlers: dict[str, grpc.RpcMethodHandler]) -> None:
        strict_handlers = {name: strict(h, f"/{service}/{name}") for name, h in handlers.items()}
        self._server.add_registered_method_handlers(service, strict_handlers)
