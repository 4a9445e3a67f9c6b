"""The one error hierarchy of batchgate.

Everything that goes wrong on a request is raised as a `GatewayError`. It carries the fields of the
Bifrost error body and an HTTP status; the edge renders it: `service.edge.status.grpc_code` maps the
status to a gRPC code, `service.edge.envelope.error_body` builds the REST body. Imports no grpc.
"""

from __future__ import annotations

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


class NotFound(GatewayError):
    status_code = 404
    type = "invalid_request_error"
    code = "not_found"


class FailedPrecondition(GatewayError):
    """The thing exists but is not in a state that allows the call (409, FAILED_PRECONDITION)."""

    status_code = 409
    type = "invalid_request_error"
    code = "failed_precondition"


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
