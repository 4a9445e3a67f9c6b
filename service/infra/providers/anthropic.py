"""Anthropic Message Batches: `POST {base}/v1/messages/batches/{id}/cancel`, no body.

Auth is `x-api-key: KEY` plus the required `anthropic-version` header (see API_VERSION). The cancel answers the
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

Listing: `GET /v1/messages/batches?limit=1000&after_id=<last_id>` (anthropic SDK `batches.list`:
`{data, has_more, first_id, last_id}`, `limit` 1-1000, "most recently created batches are returned
first"). No server-side filters, and a message batch has no metadata.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from service.config.file import Key, ProviderConfig
from service.domain.errors import InvalidRequest, ProviderError, UpstreamUnavailable
from service.domain.model import BatchState, ListedBatch, ListQuery, RequestCounts
from service.infra.providers.base import (
    Adapter,
    UpstreamRequest,
    UpstreamResponse,
    count,
    decode_json,
    next_token,
    path_segment,
    unix_seconds,
)

log = logging.getLogger(__name__)

# The newest `anthropic-version` whose message_batch shape this adapter reads: what the official SDK
# (anthropic 2.14.0, `_constants.ANTHROPIC_API_VERSION`) sends, with the same MessageBatch fields as
# under 2023-06-01. `providers.anthropic.api_version` chooses another; on the `/anthropic` route the
# caller's own header is sent instead.
API_VERSION = "2026-10-21"
VERSION_HEADER = "anthropic-version"
_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")
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

    accepts_direct_keys = True
    lists_newest_first = True
    list_page_size = 1000

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.version = config.api_version or API_VERSION

    def auth_headers(self, key: Key) -> dict[str, str]:
        return {"x-api-key": key.value}

    def request(self, method: str, url: str, key: Key) -> UpstreamRequest:
        # The configured version is a default: a caller's own (caller_headers) replaces it.
        return UpstreamRequest(
            method, url, self.headers(self.auth_headers(key), defaults={VERSION_HEADER: self.version})
        )

    def cancel_request(self, key: Key, ref: str) -> UpstreamRequest:
        return self.request("POST", f"{self.base_url(key)}/v1/messages/batches/{path_segment(ref)}/cancel", key)

    def caller_headers(self, headers: Mapping[str, str]) -> dict[str, str]:
        """On the `/anthropic` route the caller's SDK chose an `anthropic-version`; it is sent as is
        (a date, `YYYY-MM-DD`), so Anthropic answers in the shape that SDK expects."""
        version = headers.get(VERSION_HEADER)
        if version is None:
            return {}
        if not _VERSION.match(version):
            raise InvalidRequest(
                f"{VERSION_HEADER} must be a date like {API_VERSION}", param=VERSION_HEADER, provider=self.name
            )
        return {VERSION_HEADER: version}

    def retrieve_request(self, key: Key, ref: str) -> UpstreamRequest:
        """`GET /v1/messages/batches/{id}`: the same message_batch the cancel answers."""
        return self.request("GET", f"{self.base_url(key)}/v1/messages/batches/{path_segment(ref)}", key)

    def list_request(self, key: Key, query: ListQuery, page_token: str | None) -> UpstreamRequest:
        url = f"{self.base_url(key)}/v1/messages/batches"
        return self.list_get(url, key, {"limit": self.list_page_size, "after_id": page_token})

    def parse_list(
        self, data: Any, *, page_token: str | None = None, query: ListQuery | None = None
    ) -> tuple[list[ListedBatch], str | None]:
        batches = self.listed(data, "data")
        more = batches and data.get("has_more") is True
        return batches, (next_token(data, "last_id") or batches[-1].state.id) if more else None

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
        return self.error(response, message, type=error_type)


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
