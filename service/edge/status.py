"""An error's gRPC status code, from its HTTP status: the one mapping the servicer, the strict
request reader and the drop-in surfaces use."""

from __future__ import annotations

import grpc

from service.domain.errors import GatewayError

# HTTP status -> canonical gRPC code. 409 is FAILED_PRECONDITION: the batch is not in a state
# that allows the call (OpenAI "Cannot cancel a batch with status 'completed'").
_GRPC_CODE_FOR_HTTP = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def grpc_code_for_http(status: int) -> grpc.StatusCode:
    code = _GRPC_CODE_FOR_HTTP.get(status)
    if code is not None:
        return code
    if 400 <= status < 500:
        return grpc.StatusCode.INVALID_ARGUMENT if status != 429 else grpc.StatusCode.RESOURCE_EXHAUSTED
    return grpc.StatusCode.UNAVAILABLE if status >= 502 else grpc.StatusCode.INTERNAL


def grpc_code(error: GatewayError) -> grpc.StatusCode:
    """The canonical gRPC code of an error answer."""
    return grpc_code_for_http(error.status_code)
