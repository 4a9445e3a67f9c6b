"""Drop-in SDK surfaces: how a unified result and an error look on each provider's own API, so the
Anthropic, Google GenAI and boto3 SDKs work against batchgate by changing only their base URL.

Each error renderer returns the REST answer (status, JSON body, extra headers) the edge sends; gRPC
callers of the same RPCs get the canonical status and typed detail as everywhere else.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import NamedTuple

from service.domain.errors import GatewayError
from service.domain.model import CancelResult
from service.edge import envelope
from service.edge.status import grpc_code
from service.gen.batchgate.v1 import batchgate_pb2 as pb

# The provider each surface cancels on when the caller names none (override: x-model-provider).
SURFACE_DEFAULT_PROVIDER = {"openai": "openai", "anthropic": "anthropic", "genai": "gemini", "bedrock": "bedrock"}


class RenderedError(NamedTuple):
    status: int
    body: str
    headers: tuple[tuple[str, str], ...] = ()


def bifrost_error(error: GatewayError) -> RenderedError:
    return RenderedError(error.status_code, envelope.error_json(error))


_ANTHROPIC_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def anthropic_error(error: GatewayError) -> RenderedError:
    """`{"type": "error", "error": {"type", "message"}}` with the HTTP status kept."""
    if error.provider == "anthropic" and not error.is_bifrost_error and error.type:
        kind = error.type  # Anthropic's own error type, passed through
    else:
        kind = _ANTHROPIC_ERROR_TYPES.get(error.status_code, "api_error")
    return RenderedError(error.status_code, envelope.to_json(envelope.anthropic(kind, error.message)))


def google_error(error: GatewayError) -> RenderedError:
    """`{"error": {"code", "message", "status"}}`. Google says a precondition failure (a finished
    batch) with HTTP 400, not 409."""
    code = grpc_code(error)
    status = 400 if error.status_code == 409 else error.status_code
    return RenderedError(status, envelope.to_json(envelope.google(status, error.message, code.name)))


_BEDROCK_ERRORS = {
    400: "ValidationException",
    401: "AccessDeniedException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    409: "ConflictException",
    429: "ThrottlingException",
    500: "InternalServerException",
    502: "ServiceUnavailableException",
    503: "ServiceUnavailableException",
    504: "ServiceUnavailableException",
}


def bedrock_error(error: GatewayError) -> RenderedError:
    """AWS's rest-json errors: the exception name in `x-amzn-ErrorType`, `{"message"}` in the body.
    Bedrock answers ConflictException (a finished job) with HTTP 400."""
    if error.provider == "bedrock" and not error.is_bifrost_error and (error.type or "").endswith("Exception"):
        name = error.type
    else:
        name = _BEDROCK_ERRORS.get(error.status_code, "InternalServerException")
    status = 400 if name == "ConflictException" else error.status_code
    body, headers = envelope.bedrock(error.message, name)
    return RenderedError(status, envelope.to_json(body), tuple(headers.items()))


_ANTHROPIC_STATUS = {
    "cancelling": "canceling",
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
}


def _rfc3339(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def to_anthropic(result: CancelResult) -> pb.AnthropicMessageBatch:
    """The unified result as Anthropic's message_batch. Anthropic has no count of unknowns, so a
    count the provider did not report reads 0 here."""
    batch = result.batch
    status = _ANTHROPIC_STATUS.get(batch.status, "ended")
    counts = batch.counts
    if counts is None:
        request_counts = pb.AnthropicRequestCounts()
    else:
        known = [c for c in (counts.completed, counts.failed, counts.canceled, counts.expired) if c is not None]
        processing = counts.pending
        if processing is None and counts.total is not None:
            processing = max(0, counts.total - sum(known)) if status != "ended" else 0
        request_counts = pb.AnthropicRequestCounts(
            processing=processing or 0,
            succeeded=(counts.succeeded if counts.succeeded is not None else counts.completed) or 0,
            errored=counts.failed or 0,
            canceled=counts.canceled or 0,
            expired=counts.expired or 0,
        )
    # Anthropic says "cancelled" as ended + cancel_initiated_at: a provider that reports only the
    # end of a cancelled batch still reads as cancelled here.
    initiated = batch.cancelling_at
    if initiated is None and batch.status == "cancelled":
        initiated = batch.cancelled_at
    return pb.AnthropicMessageBatch(
        id=batch.id,
        type="message_batch",
        processing_status=status,
        request_counts=request_counts,
        cancel_initiated_at=_rfc3339(initiated),
        ended_at=_rfc3339(batch.cancelled_at) if status == "ended" else None,
        created_at=_rfc3339(batch.created_at),
        expires_at=_rfc3339(batch.expires_at),
    )
