"""The one error hierarchy of batchgate.

Everything that goes wrong on a request is raised as a `GatewayError`. It carries the fields of the
Bifrost error body; `service.api` turns it into a gRPC status (with a typed detail) and, for REST
callers, into the rendered JSON body and HTTP status that the Envoy edge sends.
"""

from __future__ import annotations

import grpc

from service import envelope
from service.envelope import REQUEST_TYPE

__all__ = ["REQUEST_TYPE"]  # re-exported: callers name it with the errors it describes

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


_CLASS_DEFAULT = object()


class GatewayError(Exception):
    """An error answer. `is_bifrost_error` is True for errors the gateway itself decided on and False
    for errors a provider returned (as Bifrost does)."""

    status_code = 500
    type = "internal_error"
    code: str | None = "internal_error"
    is_bifrost_error = True

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        type: str | None = None,
        code: str | None | object = _CLASS_DEFAULT,
        param: str | None = None,
        provider: str = "",
        is_bifrost_error: bool | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code
        if type is not None:
            self.type = type
        if code is not _CLASS_DEFAULT:
            self.code = code  # may be None: a provider error without a code
        if is_bifrost_error is not None:
            self.is_bifrost_error = is_bifrost_error
        self.param = param
        self.provider = provider
        # Extra response headers (e.g. retry-after), sent as gRPC initial metadata.
        self.headers = headers or {}

    @property
    def grpc_code(self) -> grpc.StatusCode:
        return grpc_code_for_http(self.status_code)

    def to_dict(self) -> dict:
        """The Bifrost error body (service.envelope)."""
        return envelope.bifrost(
            status_code=self.status_code,
            type=self.type,
            code=self.code,
            message=self.message,
            param=self.param,
            provider=self.provider,
            is_bifrost_error=self.is_bifrost_error,
        )

    def to_json(self) -> str:
        return envelope.to_json(self.to_dict())


class InvalidRequest(GatewayError):
    status_code = 400
    type = "invalid_request_error"
    code = "invalid_request"


class UnsupportedOperation(InvalidRequest):
    code = "unsupported_operation"


class Unauthenticated(GatewayError):
    status_code = 401
    type = "authentication_error"
    code = "unauthenticated"


class PermissionDenied(GatewayError):
    status_code = 403
    type = "permission_error"
    code = "permission_denied"


class Overloaded(GatewayError):
    status_code = 429
    type = "rate_limit_error"
    code = "overloaded"


class UpstreamUnavailable(GatewayError):
    """The provider could not be reached, or answered something that is not its API."""

    status_code = 502
    type = "upstream_error"
    code = "upstream_unavailable"


class DeadlineExceeded(GatewayError):
    status_code = 504
    type = "timeout_error"
    code = "deadline_exceeded"


class ProviderError(GatewayError):
    """An error the provider itself answered; keeps the provider's HTTP status and fields."""

    is_bifrost_error = False
    type = "provider_error"
    code = "provider_error"
