"""Anthropic Message Batches: `POST {base}/v1/messages/batches/{id}/cancel`, no body.

Auth is `x-api-key: KEY` plus the required `anthropic-version` header. The cancel answers the
`message_batch` object itself, so no follow-up read is needed:

    {"id", "type": "message_batch", "processing_status": "in_progress" | "canceling" | "ended",
     "request_counts": {"processing", "succeeded", "errored", "canceled", "expired"},
     "created_at", "expires_at", "ended_at", "cancel_initiated_at", "archived_at", "results_url"}

Timestamps are RFC 3339 strings (microseconds). Anthropic has no batch-level "cancelled": a
cancelled batch ends as `ended` with `cancel_initiated_at` set, which is reported as `cancelled`
(at `ended_at`). All requests stay in `processing` until the whole batch ends, so `canceled` is 0
right after a cancel.

Errors: `{"type": "error", "error": {"type", "message"}, "request_id"}` plus a `request-id` header;
`error.type` becomes our error type and the HTTP status is kept (400 invalid_request_error,
401 authentication_error, 403 permission_error, 404 not_found_error, 429 rate_limit_error,
500 api_error, 529 overloaded_error). Cancelling an ended batch is refused with a 4xx whose exact
status no public source pins down (most likely 400 invalid_request_error); it is kept as sent.
"""

from __future__ import annotations

import logging
from typing import Any

from service.config import Key, ProviderConfig
from service.errors import ProviderError, UpstreamUnavailable
from service.model import BatchState, RequestCounts
from service.providers.base import (
    Adapter,
    UpstreamRequest,
    UpstreamResponse,
    count,
    decode_json,
    path_segment,
    unix_seconds,
)

log = logging.getLogger(__name__)

API_VERSION = "2023-06-01"
VERSION_HEADER = "anthropic-version"
# Header names that carry credentials: configured extra headers never override the key.
_AUTH_HEADERS = frozenset({"x-api-key", "authorization"})
_COUNT_FIELDS = ("processing", "succeeded", "errored", "canceled", "expired")
# The unified answer carries times and counts as uint32: anything outside is unknown, not a crash.
_UINT32_LIMIT = 1 << 32


class AnthropicAdapter(Adapter):
    name = "anthropic"
    default_base_url = "https://api.anthropic.com"
    # `ended` is refined in parse_batch: with `cancel_initiated_at` set it is `cancelled`.
    statuses = {
        "in_progress": "in_progress",
        "canceling": "cancelling",
        "cancelling": "cancelling",
        "ended": "ended",
    }

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        # Everything but the key is the same on every request: built once. A configured
        # `anthropic-version` (any case) replaces the default one instead of being sent twice.
        static = {
            name: value
            for name, value in config.network.extra_headers.items()
            if name.lower() not in _AUTH_HEADERS and name.lower() != "accept"
        }
        if not any(name.lower() == VERSION_HEADER for name in static):
            static[VERSION_HEADER] = API_VERSION
        static["Accept"] = "application/json"
        self._static_headers = static

    def cancel_request(self, key: Key, ref: str) -> UpstreamRequest:
        url = f"{self.base_url(key)}/v1/messages/batches/{path_segment(ref)}/cancel"
        return UpstreamRequest("POST", url, {**self._static_headers, "x-api-key": key.value})

    def retrieve_request(self, key: Key, ref: str) -> UpstreamRequest:
        """`GET /v1/messages/batches/{id}`: the same message_batch the cancel answers."""
        url = f"{self.base_url(key)}/v1/messages/batches/{path_segment(ref)}"
        return UpstreamRequest("GET", url, {**self._static_headers, "x-api-key": key.value})

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        if not isinstance(data, dict) or not data.get("processing_status"):
            raise UpstreamUnavailable(f"{self.name} answered without a message_batch object", provider=self.name)
        status = self.status(data["processing_status"])
        ended_at = _seconds(data.get("ended_at"))
        cancelled_at = None
        if status == "ended" and data.get("cancel_initiated_at"):
            status, cancelled_at = "cancelled", ended_at
        return BatchState(
            id=str(data.get("id") or batch_id),
            status=status,
            counts=_counts(data.get("request_counts")),
            cancelling_at=_seconds(data.get("cancel_initiated_at")),
            cancelled_at=cancelled_at,
            created_at=_seconds(data.get("created_at")),
            expires_at=_seconds(data.get("expires_at")),
        )

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        """Anthropic's envelope `{"type": "error", "error": {"type", "message"}, "request_id"}`; an
        answer without it (a proxy's page, an empty body) keeps its status with a generic message."""
        data = decode_json(response, self.name, allow_error=True)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, str):
            err = {"message": err}
        elif not isinstance(err, dict):
            err = {}
        message = err.get("message")
        error_type = err.get("type")
        request_id = response.headers.get("request-id") or (data.get("request_id") if isinstance(data, dict) else None)
        if request_id:
            log.debug("%s answered HTTP %s (request-id %s)", self.name, response.status, request_id)
        return ProviderError(
            message if isinstance(message, str) and message else f"{self.name} answered HTTP {response.status}",
            status_code=response.status,
            type=error_type if isinstance(error_type, str) and error_type else "provider_error",
            code=None,
            provider=self.name,
        )


def _counts(raw: Any) -> RequestCounts | None:
    """Anthropic's five tallies in unified terms. The total is their sum, and only when all five
    are known: a missing tally leaves the total unknown rather than undercounted."""
    if not isinstance(raw, dict):
        return None
    processing, succeeded, errored, canceled, expired = parts = [_count(raw.get(name)) for name in _COUNT_FIELDS]
    known = [part for part in parts if part is not None]
    total = sum(known) if len(known) == len(parts) else None
    return RequestCounts(
        total=total if total is not None and total < _UINT32_LIMIT else None,
        completed=succeeded,
        failed=errored,
        succeeded=succeeded,
        expired=expired,
        canceled=canceled,
        pending=processing,
    )


def _seconds(value: Any) -> int | None:
    """Unix seconds of an RFC 3339 time; None for garbage, the epoch or before (Go's zero time
    `0001-01-01T00:00:00Z`), and times past what the answer can carry."""
    try:
        seconds = unix_seconds(value)
    except (ValueError, OverflowError):
        return None
    return seconds if seconds is not None and 0 < seconds < _UINT32_LIMIT else None


def _count(value: Any) -> int | None:
    try:
        number = count(value)
    except ValueError:  # digit-like characters int() refuses, e.g. "1²"
        return None
    return number if number is not None and number < _UINT32_LIMIT else None
