"""The one error hierarchy of batchgate, and the one catalogue of the codes it answers with.

Everything that goes wrong on a request is raised as a `GatewayError`. It carries the fields of the
Bifrost error body and an HTTP status; the edge renders it: `service.edge.status.grpc_code` maps the
status to a gRPC code, `service.edge.envelope.error_body` builds the REST body. Imports no grpc.

`CATALOGUE` lists every `error.code` batchgate itself answers with (`is_bifrost_error: true`), the
ones Envoy's own replies use (gateway/render.py takes their type and status from here), and what
each means; README.md's error table is generated from it (`python -m gateway.render --error-table`)
and a test fails when a code is raised anywhere without an entry here. Errors a provider answered
(`is_bifrost_error: false`) keep the provider's own status, type and code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict, Unpack

# The Bifrost body's `extra_fields.request_type` of an error on a cancel route; "" elsewhere (an
# unknown path, /health).
REQUEST_TYPE = "batch_cancel"


@dataclass(frozen=True, slots=True)
class ErrorCode:
    """One `error.code`: its HTTP status (None: the provider's), its `error.type` (always `*_error`)
    and when it is answered. `edge`: answered by Envoy itself (gateway/render.py), not the service."""

    code: str
    status: int | None
    type: str
    when: str
    edge: bool = False


CATALOGUE: tuple[ErrorCode, ...] = (
    # 400
    ErrorCode(
        "invalid_request",
        400,
        "invalid_request_error",
        "a field is missing or out of bounds (`provider`, `batch_id`, `wait_seconds`, 1 to 1,000 bulk items), an "
        "unsafe or malformed batch id, `batch_id` outside the URL path, a malformed `anthropic-version`, a gRPC "
        "call without a (valid) request message, a header value that is not printable ASCII (named, never shown); "
        "at the edge: a body or query the transcoder cannot read",
    ),
    ErrorCode("unknown_provider", 400, "invalid_request_error", "`provider` names no provider batchgate knows"),
    ErrorCode("provider_not_configured", 400, "invalid_request_error", "a known provider without a `providers` entry"),
    ErrorCode(
        "unsupported_operation",
        400,
        "invalid_request_error",
        "the provider cannot cancel batches (`fireworks`, `openrouter`, ...)",
    ),
    ErrorCode(
        "no_batch_keys",
        400,
        "invalid_request_error",
        "no enabled key with `use_for_batch_api: true` (or none the virtual key's `key_ids` allow)",
    ),
    ErrorCode(
        "direct_key_unsupported",
        400,
        "invalid_request_error",
        "a caller's own key for a provider that cannot use one (Bedrock, Vertex)",
    ),
    ErrorCode("invalid_key_config", 400, "invalid_request_error", "a Vertex key without usable `vertex_key_config`"),
    ErrorCode(
        "key_not_allowed",
        400,
        "invalid_request_error",
        "an operation's batch under a configured key the caller may not use",
    ),
    ErrorCode("unknown_status", 400, "invalid_request_error", "CancelMatching: a status filter names no status"),
    ErrorCode("unsupported_filter", 400, "invalid_request_error", "ListOperations: a `filter` it does not support"),
    ErrorCode(
        "notify_url_not_allowed",
        400,
        "invalid_request_error",
        "CancelMatching: `notify.url` is not under one of `operations.notify_urls`",
    ),
    # 401, 403
    ErrorCode("unauthenticated", 401, "authentication_error", "credentials refused (the generic code of a 401)"),
    ErrorCode(
        "virtual_key_required",
        401,
        "authentication_error",
        "auth is enforced and the call carries no virtual key or gateway credentials",
    ),
    ErrorCode("virtual_key_not_found", 401, "authentication_error", "unknown, inactive or expired virtual key"),
    ErrorCode(
        "invalid_credentials",
        401,
        "authentication_error",
        "wrong gateway credentials, or a Vertex key's service account that cannot be loaded",
    ),
    ErrorCode("permission_denied", 403, "permission_error", "not allowed (the generic code of a 403)"),
    ErrorCode("provider_blocked", 403, "permission_error", "the virtual key does not allow this provider"),
    ErrorCode(
        "virtual_key_revoked",
        401,
        "authentication_error",
        "an operation's virtual key was revoked, deactivated or expired while it ran (its `error`)",
    ),
    ErrorCode(
        "cancel_matching_not_allowed",
        403,
        "permission_error",
        "CancelMatching with a selector, without admin credentials or a virtual key with `allow_cancel_matching`",
    ),
    ErrorCode("not_found", 404, "invalid_request_error", "no such thing (the generic code of a 404)"),
    ErrorCode(
        "operation_not_found",
        404,
        "invalid_request_error",
        "an operation that does not exist or that the caller did not start (one answer for both)",
    ),
    ErrorCode(
        "failed_precondition",
        409,
        "invalid_request_error",
        "not in a state that allows the call (the generic code of a 409)",
    ),
    ErrorCode("operation_running", 409, "invalid_request_error", "DeleteOperation of an operation that is not done"),
    ErrorCode(
        "too_many_matches",
        409,
        "invalid_request_error",
        "an operation's selector matches more than `max_batches` (its `error`; nothing was cancelled)",
    ),
    # 404, 405, 408, 413
    ErrorCode(
        "route_not_found",
        404,
        "invalid_request_error",
        "no such path: an unknown route, a trailing `/`, an empty segment, a verb the route does not have",
    ),
    ErrorCode(
        "method_not_allowed",
        405,
        "invalid_request_error",
        "a route's path with another method (`GET` on a cancel route); `Allow` names the method",
        edge=True,
    ),
    ErrorCode("request_timeout", 408, "invalid_request_error", "the request did not arrive in time"),
    ErrorCode(
        "request_too_large",
        413,
        "invalid_request_error",
        "a body over 64 KiB (768 KiB on the bulk routes, 1 MiB for a native gRPC message), declared or chunked",
        edge=True,
    ),
    # 429
    ErrorCode(
        "rate_limited",
        429,
        "rate_limit_error",
        "the virtual key's request limit, with `Retry-After`",
    ),
    ErrorCode(
        "overloaded",
        429,
        "rate_limit_error",
        "the provider's `concurrency_and_buffer_size` is full",
    ),
    ErrorCode(
        "too_many_concurrent_calls",
        429,
        "rate_limit_error",
        "the caller already holds as many calls, bulk or waiting calls, or batches at once as `client.limits` "
        "allows (per worker; the worker's own bound on batches too), with `Retry-After: 1`",
    ),
    ErrorCode(
        "too_many_operations",
        429,
        "rate_limit_error",
        "the caller already runs `operations.max_running_per_caller` operations",
    ),
    ErrorCode(
        "operation_cancelled",
        499,
        "cancelled_error",
        "an operation stopped by CancelOperation (its `error`, gRPC code 1 CANCELLED)",
    ),
    # 5xx
    ErrorCode("internal_error", 500, "internal_error", "a bug: details are logged, never sent"),
    ErrorCode("unimplemented", 501, "internal_error", "operations are not served by this process"),
    ErrorCode(
        "not_implemented",
        501,
        "invalid_request_error",
        "a request Envoy does not implement (a `Transfer-Encoding` it does not support)",
        edge=True,
    ),
    ErrorCode(
        "upstream_unavailable",
        502,
        "upstream_error",
        "the provider could not be reached or answered HTML or malformed JSON (502); at the edge: the "
        "batchgate service is down or gave no valid answer (503, 502)",
    ),
    ErrorCode("circuit_open", 503, "upstream_error", "the provider's circuit breaker is open"),
    ErrorCode("draining", 503, "upstream_error", "`GET /health` while the service shuts down"),
    ErrorCode(
        "rate_limit_store_unavailable",
        503,
        "upstream_error",
        "the rate-limit store fails and `governance.store.on_error` is `deny`",
    ),
    ErrorCode("deadline_exceeded", 504, "timeout_error", "the call's deadline or the provider's timeout passed"),
    ErrorCode("upstream_timeout", 504, "timeout_error", "the batchgate service did not answer in time", edge=True),
    ErrorCode(
        "provider_error",
        None,
        "provider_error",
        "the fallback of an error a provider answered (`is_bifrost_error: false`, its status kept): its own "
        "`type` and `code` are passed on when it sends them",
    ),
)
CODES: dict[str, ErrorCode] = {entry.code: entry for entry in CATALOGUE}


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
    # "" for an error that is not about a cancel (an unknown path, /health).
    request_type = REQUEST_TYPE

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
