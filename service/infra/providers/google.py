"""What Google's batch APIs share: the Gemini API (`gemini.py`) and Vertex AI (`vertex.py`).

Both cancel calls answer `{}`, so the batch's state after the cancel comes from a follow-up GET.
Both speak Google's error envelope:

    {"error": {"code": 404, "message": "...", "status": "NOT_FOUND", "details": [...]}}

`parse_error` keeps the HTTP status and message, puts the canonical status string (`NOT_FOUND`,
`RESOURCE_EXHAUSTED`, ...) in `error.code` and derives `error.type` from it. One exception:
`FAILED_PRECONDITION` (what Google answers when a job can no longer be cancelled) is sent with
HTTP 400 but means "not in a state that allows the call", which is exactly what the unified API
reports as 409 / gRPC FAILED_PRECONDITION for every other provider (OpenAI 409, Bedrock
ConflictException); it is answered as 409 so a finished batch means the same everywhere.
A bad API key (HTTP 400 INVALID_ARGUMENT with ErrorInfo reason API_KEY_INVALID, and the like) keeps
its status; the error type says `authentication_error`.

Request counts: proto3 JSON omits zero-valued fields, so inside a present `batchStats` /
`completionStats` a missing count is 0; when the stats object itself is missing every count is
unknown (None).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.domain.errors import ProviderError
from service.infra.providers.base import Adapter, UpstreamResponse, count, decode_json

# Vertex JobState (also what google-genai reports for Gemini batches).
JOB_STATES: Mapping[str, str] = {
    "job_state_queued": "validating",
    "job_state_pending": "validating",
    "job_state_running": "in_progress",
    "job_state_succeeded": "completed",
    "job_state_failed": "failed",
    "job_state_cancelling": "cancelling",
    "job_state_cancelled": "cancelled",
    # Stopped but resumable: not finished, so it counts as running (and `cancelling` after a cancel).
    "job_state_paused": "in_progress",
    "job_state_expired": "expired",
    # An update of a running job; it goes back to RUNNING afterwards.
    "job_state_updating": "in_progress",
    # Finished with some results missing; the counts carry the failures.
    "job_state_partially_succeeded": "completed",
}
# Gemini BatchState.
BATCH_STATES: Mapping[str, str] = {
    "batch_state_pending": "validating",
    "batch_state_running": "in_progress",
    "batch_state_succeeded": "completed",
    "batch_state_failed": "failed",
    "batch_state_cancelled": "cancelled",
    "batch_state_expired": "expired",
}
# Canonical status string -> our error type.
_ERROR_TYPES: Mapping[str, str] = {
    "INVALID_ARGUMENT": "invalid_request_error",
    "FAILED_PRECONDITION": "invalid_request_error",
    "OUT_OF_RANGE": "invalid_request_error",
    "UNAUTHENTICATED": "authentication_error",
    "PERMISSION_DENIED": "permission_error",
    "NOT_FOUND": "not_found_error",
    "ALREADY_EXISTS": "invalid_request_error",
    "ABORTED": "conflict_error",
    "RESOURCE_EXHAUSTED": "rate_limit_error",
    "CANCELLED": "api_error",
    "INTERNAL": "api_error",
    "UNKNOWN": "api_error",
    "DATA_LOSS": "api_error",
    "UNIMPLEMENTED": "api_error",
    "UNAVAILABLE": "api_error",
    "DEADLINE_EXCEEDED": "timeout_error",
}
# ErrorInfo reasons that mean "these credentials are not valid", whatever the HTTP status.
_AUTH_REASONS = frozenset(
    {"API_KEY_INVALID", "API_KEY_EXPIRED", "API_KEY_SERVICE_BLOCKED", "CREDENTIALS_MISSING", "ACCESS_TOKEN_EXPIRED",
     "ACCESS_TOKEN_TYPE_UNSUPPORTED", "SERVICE_DISABLED"}
)  # fmt: skip
_ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"


def google_error(provider: str, response: UpstreamResponse) -> ProviderError:
    """A ProviderError from Google's error envelope (also accepts it wrapped in a one-element list,
    as some Google front ends send it, and OAuth's `{"error": "...", "error_description"}`)."""
    data = decode_json(response, provider, allow_error=True)
    if isinstance(data, list) and data and isinstance(data[0], dict):
        data = data[0]
    err = data.get("error") if isinstance(data, dict) else None
    status = message = reason = None
    if isinstance(err, dict):
        status = err.get("status")
        message = err.get("message")
        details = err.get("details")
        for detail in details if isinstance(details, list) else ():
            if isinstance(detail, dict) and detail.get("@type") == _ERROR_INFO:
                reason = detail.get("reason")
                break
    elif isinstance(err, str):  # OAuth token endpoint style
        status, message = err, data.get("error_description")
    status = status if isinstance(status, str) and status else None
    http_status = response.status
    if status == "FAILED_PRECONDITION" and http_status == 400:
        http_status = 409  # see the module docstring: "not in a state that allows the call"
    if reason in _AUTH_REASONS:
        error_type = "authentication_error"
    elif status is not None and status in _ERROR_TYPES:
        error_type = _ERROR_TYPES[status]
    else:
        error_type = "api_error" if http_status >= 500 else "invalid_request_error"
    return ProviderError(
        str(message) if message else f"{provider} answered HTTP {response.status}",
        status_code=http_status,
        type=error_type,
        code=status,
        provider=provider,
    )


def stats(data: Any, names: tuple[str, ...]) -> tuple[int | None, ...] | None:
    """Counts from a proto3-JSON stats object: None when the object is missing, 0 for an omitted
    field (proto3 leaves zeros out), None for a value that is not a count (e.g. -1 = unknown)."""
    if not isinstance(data, dict):
        return None
    return tuple(count(data[name]) if name in data else 0 for name in names)


class GoogleAdapter(Adapter):
    """What Gemini and Vertex share: the error envelope."""

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        return google_error(self.name, response)
