"""The one error hierarchy of batchgate.

Everything that goes wrong on a request is raised as a `GatewayError`. It carries the fields of the
Bifrost error body and an HTTP status; the edge renders it: `service.edge.status.grpc_code` maps the
status to a gRPC code, `service.edge.envelope.error_body` builds the REST body. Imports no grpc.
"""

from __future__ import annotations

from typing import TypedDict, Unpack


class ErrorFields(TypedDict, total=False):
    """What a `GatewayError` may set besides its message; an unset field keeps its class's value."""

    status_code: int
    type: str
    code: str | None  # None: a provider error without a code
    param: str | None
    provider: str
    # Extra response headers (e.g. retry-after), sent as gRPC initial metadata.
    headers: dict[str, str]
    # False for an error a provider answered (a stored one, read back: see ProviderError).
    is_bifrost_error: bool


class GatewayError(Exception):
    """An error answer. `is_bifrost_error` is True for errors the gateway itself decided on and False
    for errors a provider returned (as Bifrost does)."""

    status_code = 500
    type = "internal_error"
    code: str | None = "internal_error"
    is_bifrost_error = True

    def __init__(self, message: str, **fields: Unpack[ErrorFields]) -> None:
        super().__init__(message)
        self.message = message
        if "status_code" in fields:
            self.status_code = fields["status_code"]
        if "type" in fields:
            self.type = fields["type"]
        if "code" in fields:
            self.code = fields["code"]
        self.param = fields.get("param")
        self.provider = fields.get("provider", "")
        self.headers = fields.get("headers") or {}
        if "is_bifrost_error" in fields:
            self.is_bifrost_error = fields["is_bifrost_error"]


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
