"""Drop-in SDK surfaces: one `Surface` entry per provider API that batchgate also speaks, so that
the OpenAI, Anthropic, Google GenAI and boto3 SDKs work against it by changing only their base URL.

An entry says everything about its API in one place: its name (the first path segment of its REST
routes, and the `surface` those routes set), the RPC its routes call, the provider it cancels on when
the caller names none (override: x-model-provider), how the unified result reads in its shape, and
its error envelope (`ErrorShape`): how a service error is worded and rendered on it, and the words
for Envoy's own replies on its routes. The servicer (service.edge.api) and the Envoy renderer
(gateway/render.py) both read `SURFACES`.

Each rendering returns the REST answer (status, JSON body, extra headers) the edge sends; gRPC
callers of the same RPCs get the canonical status and typed detail as everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

from google.protobuf import empty_pb2
from google.protobuf.message import Message

from service.domain.errors import GatewayError
from service.domain.model import CancelResult
from service.edge import envelope
from service.edge.converters import result_to_proto
from service.edge.status import grpc_code
from service.gen.batchgate.v1 import batchgate_pb2 as pb


class RenderedError(NamedTuple):
    status: int
    body: str
    headers: tuple[tuple[str, str], ...] = ()


def bifrost_error(error: GatewayError) -> RenderedError:
    return RenderedError(error.status_code, envelope.error_json(error))


# (word, message, status) -> (JSON body, extra headers). `status` is the HTTP status, or an Envoy
# format string in the local replies gateway/render.py writes.
ErrorBody = Callable[[str, str, Any], tuple[dict[str, Any], dict[str, str]]]


@dataclass(frozen=True, slots=True)
class ErrorShape:
    """A drop-in API's own error envelope: `body` builds it from a word (an error type, a status or
    an exception name, as the API says it), `word` gives a service error's word and HTTP status on
    this API, and `local_words` the word for each of Envoy's own replies, by HTTP status (None: any
    other status)."""

    body: ErrorBody
    word: Callable[[GatewayError], tuple[str, int]]
    local_words: Mapping[int | None, str]


@dataclass(frozen=True, slots=True)
class Surface:
    """One drop-in API (see the module docstring); `shape` None: errors in the Bifrost body."""

    name: str
    rpc: str
    default_provider: str
    answer: Callable[[CancelResult], Message]
    shape: ErrorShape | None = field(default=None, repr=False)

    def render(self, error: GatewayError) -> RenderedError:
        """`error` as this API's REST answer."""
        if self.shape is None:
            return bifrost_error(error)
        word, status = self.shape.word(error)
        body, headers = self.shape.body(word, error.message, status)
        return RenderedError(status, envelope.to_json(body), tuple(headers.items()))


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


def _anthropic_word(error: GatewayError) -> tuple[str, int]:
    """Anthropic's error type, with the HTTP status kept."""
    if error.provider == "anthropic" and not error.is_bifrost_error and error.type:
        return error.type, error.status_code  # Anthropic's own error type, passed through
    return _ANTHROPIC_ERROR_TYPES.get(error.status_code, "api_error"), error.status_code


def _anthropic_body(word: str, message: str, status: Any) -> tuple[dict[str, Any], dict[str, str]]:
    return envelope.anthropic(word, message), {}


def _google_word(error: GatewayError) -> tuple[str, int]:
    """The canonical status name. Google says a precondition failure (a finished batch) with HTTP
    400, not 409."""
    return grpc_code(error).name, 400 if error.status_code == 409 else error.status_code


def _google_body(word: str, message: str, status: Any) -> tuple[dict[str, Any], dict[str, str]]:
    return envelope.google(status, message, word), {}


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


def _bedrock_word(error: GatewayError) -> tuple[str, int]:
    """The AWS exception name. Bedrock answers ConflictException (a finished job) with HTTP 400."""
    if error.provider == "bedrock" and not error.is_bifrost_error and (error.type or "").endswith("Exception"):
        name = error.type
    else:
        name = _BEDROCK_ERRORS.get(error.status_code, "InternalServerException")
    return name, 400 if name == "ConflictException" else error.status_code


def _bedrock_body(word: str, message: str, status: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """AWS's rest-json errors: the exception name in `x-amzn-ErrorType`, `{"message"}` in the body."""
    return envelope.bedrock(message, word)


def _empty(result: CancelResult) -> empty_pb2.Empty:
    return empty_pb2.Empty()


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


OPENAI = Surface("openai", "Cancel", "openai", result_to_proto)
ANTHROPIC = Surface(
    "anthropic",
    "CancelAnthropic",
    "anthropic",
    to_anthropic,
    ErrorShape(
        _anthropic_body,
        _anthropic_word,
        {
            404: "not_found_error",
            405: "invalid_request_error",
            408: "invalid_request_error",
            413: "request_too_large",
            500: "api_error",
            501: "invalid_request_error",
            502: "api_error",
            503: "api_error",
            504: "timeout_error",
            None: "invalid_request_error",
        },
    ),
)
GENAI = Surface(
    "genai",
    "CancelGenAI",
    "gemini",
    _empty,
    ErrorShape(
        _google_body,
        _google_word,
        {
            404: "NOT_FOUND",
            405: "INVALID_ARGUMENT",
            408: "DEADLINE_EXCEEDED",
            413: "INVALID_ARGUMENT",
            500: "INTERNAL",
            501: "UNIMPLEMENTED",
            502: "UNAVAILABLE",
            503: "UNAVAILABLE",
            504: "DEADLINE_EXCEEDED",
            None: "INVALID_ARGUMENT",
        },
    ),
)
BEDROCK = Surface(
    "bedrock",
    "StopModelInvocationJob",
    "bedrock",
    _empty,
    ErrorShape(
        _bedrock_body,
        _bedrock_word,
        {
            404: "UnknownOperationException",
            405: "ValidationException",
            408: "RequestTimeoutException",
            413: "ValidationException",
            500: "InternalServerException",
            501: "ValidationException",
            502: "ServiceUnavailableException",
            503: "ServiceUnavailableException",
            504: "ServiceUnavailableException",
            None: "ValidationException",
        },
    ),
)
SURFACES: dict[str, Surface] = {surface.name: surface for surface in (OPENAI, ANTHROPIC, GENAI, BEDROCK)}


def rpc_renderer(method: str) -> Callable[[GatewayError], RenderedError]:
    """How the REST routes of RPC `method` (its name) render an error: the drop-in API's own shape
    when the RPC is a drop-in's own, else the Bifrost body (the native and OpenAI routes share Cancel)."""
    for surface in SURFACES.values():
        if surface.rpc == method and surface.shape is not None:
            return surface.render
    return bifrost_error
