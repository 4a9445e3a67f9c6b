"""One exception class per kind of failure, all deriving from `BatchgateError`.

The service attaches a typed `batchgate.v1.ErrorDetail` (the same fields as the REST error body) to
every failed call; the exception carries those fields, so callers branch on the class
(`except NotFound:`) and read `status_code`, `type`, `code`, `message` and `provider` without
unpacking `google.rpc.Status` themselves. A CancelMany item that failed carries the same detail
without a gRPC status; its class is chosen from the HTTP status, with the service's own table.

`retryable` says whether trying the same call again is safe and useful without multiplying the
calls to the provider: the call never reached batchgate (the connection was not made, so nothing
was sent), or batchgate itself refused it before calling the provider and said when to come back
(a Retry-After: its admission limit, a rate limit, an open circuit). An answer that came from the
provider, or a provider that stayed down through batchgate's own retries, is not: batchgate already
retried it per key.
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_status import rpc_status

from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb

REQUEST_TYPE = "batch_cancel"


class BatchgateError(Exception):
    """A failed call or item. `status_code` is the HTTP status a REST caller would have seen;
    `grpc_code` the canonical gRPC code. `detail` is the raw ErrorDetail (None when the failure
    never reached the service, e.g. the target is down)."""

    grpc_code: grpc.StatusCode = grpc.StatusCode.UNKNOWN
    default_status = 500
    default_type = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        type: str | None = None,
        code: str | None = None,
        provider: str = "",
        param: str | None = None,
        is_bifrost_error: bool = True,
        grpc_code: grpc.StatusCode | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        detail: pb.ErrorDetail | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code if status_code is not None else self.default_status
        self.type = type or self.default_type
        self.code = code
        self.provider = provider
        self.param = param
        self.is_bifrost_error = is_bifrost_error
        if grpc_code is not None:
            self.grpc_code = grpc_code
        self.request_id = request_id
        self.retry_after = retry_after
        self.detail = detail

    def __str__(self) -> str:
        where = f" ({self.provider})" if self.provider else ""
        return f"{self.status_code} {self.label}{where}: {self.message}"

    @property
    def retryable(self) -> bool:
        """True when the same call may be sent again without another call to the provider: batchgate
        answered it itself (`is_bifrost_error`, with its ErrorDetail) and sent a Retry-After, which
        it does only for refusals made before any provider call. `ConnectionFailed` overrides it."""
        return self.detail is not None and self.is_bifrost_error and self.retry_after is not None

    @property
    def label(self) -> str:
        """The error's code, or its type when the code is absent or just repeats the status."""
        return self.code if self.code and self.code != str(self.status_code) else self.type

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status_code={self.status_code}, code={self.code!r}, message={self.message!r})"

    def to_dict(self) -> dict[str, Any]:
        """The REST error body, field for field (`code` and `param` are null when absent)."""
        return {
            "is_bifrost_error": self.is_bifrost_error,
            "status_code": self.status_code,
            "error": {"type": self.type, "code": self.code, "message": self.message, "param": self.param},
            "extra_fields": {"provider": self.provider, "request_type": REQUEST_TYPE},
        }


class InvalidRequest(BatchgateError):
    """400: bad or unsafe batch id, unknown or unconfigured provider, unsupported operation."""

    grpc_code = grpc.StatusCode.INVALID_ARGUMENT
    default_status = 400
    default_type = "invalid_request_error"


class Unauthenticated(BatchgateError):
    """401: no or unknown virtual key, wrong gateway credentials, or every provider key refused."""

    grpc_code = grpc.StatusCode.UNAUTHENTICATED
    default_status = 401
    default_type = "authentication_error"


class PermissionDenied(BatchgateError):
    """403: the virtual key does not allow this provider, or the provider refused every key."""

    grpc_code = grpc.StatusCode.PERMISSION_DENIED
    default_status = 403
    default_type = "permission_error"


class NotFound(BatchgateError):
    """404: no such batch on any configured key."""

    grpc_code = grpc.StatusCode.NOT_FOUND
    default_status = 404
    default_type = "not_found_error"


class Conflict(BatchgateError):
    """409: the batch already finished and cannot be cancelled."""

    grpc_code = grpc.StatusCode.FAILED_PRECONDITION
    default_status = 409
    default_type = "invalid_request_error"


class RateLimited(BatchgateError):
    """429: the virtual key's limit, the provider's rate limit, or the service's admission limit.
    `retry_after` holds the server's Retry-After in seconds when it sent one."""

    grpc_code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_status = 429
    default_type = "rate_limit_error"


class Unavailable(BatchgateError):
    """502/503: the provider could not be reached (after the service's own retries), its circuit
    is open, or the service itself is down or draining."""

    grpc_code = grpc.StatusCode.UNAVAILABLE
    default_status = 503
    default_type = "upstream_error"


class ConnectionFailed(Unavailable):
    """The call never got an answer from batchgate: nothing listens at the target, the name does
    not resolve, TLS failed, or the connection broke. Unlike other `Unavailable` errors it carries
    no ErrorDetail. `request_sent` is False when no connection was made (nothing was sent, so a
    retry is safe) and True when the connection broke after the request went out (it may have been
    done)."""

    def __init__(self, message: str, *, request_sent: bool = True, **fields: Any) -> None:
        super().__init__(message, **fields)
        self.request_sent = request_sent

    @property
    def retryable(self) -> bool:
        return not self.request_sent


class ClientClosed(BatchgateError):
    """The client was closed (`close()`, or its `with` block ended) before this call."""

    grpc_code = grpc.StatusCode.CANCELLED
    default_status = 499
    default_type = "client_closed"


class DeadlineExceeded(BatchgateError):
    """504: the call's timeout (or the provider's) passed."""

    grpc_code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_status = 504
    default_type = "timeout_error"


class Cancelled(BatchgateError):
    """499: the call was cancelled by the caller."""

    grpc_code = grpc.StatusCode.CANCELLED
    default_status = 499
    default_type = "cancelled"


class InternalError(BatchgateError):
    """500 and anything else: a bug or an unexpected answer."""

    grpc_code = grpc.StatusCode.INTERNAL


_BY_GRPC_CODE: dict[grpc.StatusCode, type[BatchgateError]] = {
    cls.grpc_code: cls
    for cls in (
        InvalidRequest,
        Unauthenticated,
        PermissionDenied,
        NotFound,
        Conflict,
        RateLimited,
        Unavailable,
        DeadlineExceeded,
        Cancelled,
        InternalError,
    )
}

# HTTP status -> class, the service's table (service/edge/status.py) read the other way.
_BY_HTTP_STATUS: dict[int, type[BatchgateError]] = {
    400: InvalidRequest,
    413: InvalidRequest,
    422: InvalidRequest,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    408: DeadlineExceeded,
    504: DeadlineExceeded,
    409: Conflict,
    412: Conflict,
    429: RateLimited,
    499: Cancelled,
    502: Unavailable,
    503: Unavailable,
}


def class_for_http_status(status: int) -> type[BatchgateError]:
    cls = _BY_HTTP_STATUS.get(status)
    if cls is not None:
        return cls
    if 400 <= status < 500:
        return InvalidRequest
    return Unavailable if status >= 502 else InternalError


def from_detail(detail: pb.ErrorDetail, *, request_id: str | None = None) -> BatchgateError:
    """The exception for an ErrorDetail on its own (a failed CancelMany item)."""
    return _build(class_for_http_status(detail.status_code), detail, None, request_id, None)


def grpc_status_code(number: int) -> grpc.StatusCode:
    """The grpc.StatusCode of a google.rpc.Code number (UNKNOWN for one gRPC does not define)."""
    return next((code for code in grpc.StatusCode if code.value[0] == number), grpc.StatusCode.UNKNOWN)


def from_status(
    code: int, message: str, detail: pb.ErrorDetail | None, *, request_id: str | None = None
) -> BatchgateError:
    """The exception for a google.rpc.Status that is data rather than a failed call (a done
    operation's `error`): with its ErrorDetail, as `from_detail` (the class from the HTTP status)
    with the status's gRPC code; without one, the class of the gRPC code."""
    grpc_code = grpc_status_code(code)
    if detail is not None:
        return _build(class_for_http_status(detail.status_code), detail, grpc_code, request_id, None)
    cls = _BY_GRPC_CODE.get(grpc_code, InternalError)
    return cls(
        message or grpc_code.name.lower(), code=grpc_code.name.lower(), grpc_code=grpc_code, request_id=request_id
    )


# What gRPC says when it could not connect at all: the request was never sent. (A connection that
# broke after sending says e.g. "Stream removed (Socket closed)"; Envoy, in front of the service,
# already retries its own connect failures and refused streams.)
NOT_CONNECTED_MARKERS = (
    "failed to connect to all addresses",
    "errors resolving",
    "dns resolution failed",
    "name resolution failure",
    "no healthy upstream",
)


def never_sent(message: str) -> bool:
    """Whether a detail-less UNAVAILABLE message says that no connection was made."""
    lowered = message.lower()
    return any(marker in lowered for marker in NOT_CONNECTED_MARKERS)


def from_rpc_error(err: grpc.RpcError, request_id: str | None = None) -> BatchgateError:
    """The exception for a failed call: the class from the gRPC code, the fields from the attached
    ErrorDetail when there is one, else from the status itself. The request id is the one the
    service answered with, else `request_id` (the one the call was sent with)."""
    code = _call_value(err, "code") or grpc.StatusCode.UNKNOWN
    headers = _metadata(err)
    request_id = headers.get("x-request-id") or request_id
    retry_after = _seconds(headers.get("retry-after"))
    detail = _detail(err)
    cls = _BY_GRPC_CODE.get(code, InternalError)
    if detail is not None:
        return _build(cls, detail, code, request_id, retry_after)
    message = _call_value(err, "details") or code.name.lower()
    if cls is Unavailable:
        return ConnectionFailed(
            message,
            request_sent=not never_sent(message),
            code=code.name.lower(),
            grpc_code=code,
            request_id=request_id,
            retry_after=retry_after,
        )
    return cls(message, code=code.name.lower(), grpc_code=code, request_id=request_id, retry_after=retry_after)


def _call_value(err: grpc.RpcError, name: str) -> Any:
    """`err.code()` / `err.details()`: grpc's errors are also calls, but `RpcError` itself does not
    promise either."""
    getter = getattr(err, name, None)
    return getter() if callable(getter) else None


def _build(
    cls: type[BatchgateError],
    detail: pb.ErrorDetail,
    grpc_code: grpc.StatusCode | None,
    request_id: str | None,
    retry_after: float | None,
) -> BatchgateError:
    error = detail.error
    return cls(
        error.message,
        status_code=detail.status_code or None,
        type=error.type or None,
        code=error.code if error.HasField("code") else None,
        param=error.param if error.HasField("param") else None,
        provider=detail.extra_fields.provider,
        is_bifrost_error=detail.is_bifrost_error,
        grpc_code=grpc_code,
        request_id=request_id,
        retry_after=retry_after,
        detail=detail,
    )


def _detail(err: grpc.RpcError) -> pb.ErrorDetail | None:
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]  # an RpcError raised by a call is one
    except (ValueError, AttributeError):  # details that do not match the status, or not a call
        return None
    if status is None:
        return None
    for any_detail in status.details:
        detail = pb.ErrorDetail()
        if any_detail.Unpack(detail):
            return detail
    return None


def _metadata(err: grpc.RpcError) -> dict[str, str]:
    headers: dict[str, str] = {}
    for getter in ("initial_metadata", "trailing_metadata"):
        try:
            pairs = getattr(err, getter)() or ()
        except Exception:  # noqa: BLE001 - metadata is a courtesy; the error must still be raised
            continue
        for key, value in pairs:
            if isinstance(value, str):
                headers.setdefault(key.lower(), value)
    return headers


def _seconds(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
