"""xAI batches: `POST {base}/v1/batches/{batch_id}:cancel` with `Authorization: Bearer KEY`.

The cancel answers the Batch itself (xAI REST API docs and the official xai-sdk `Batch` message):

    {"batch_id", "name", "create_time", "expire_time", "create_api_key_id", "cancel_time",
     "cancel_by_xai_message", "state": {"num_requests", "num_pending", "num_success", "num_error",
     "num_cancelled"}, "cost_breakdown", "input_file_id"}

A batch has no status field: it is a container whose progress is its request tallies, and xAI's
own `batch.proto` (xai-org/xai-proto, `Batch.state`) says the tallies are "not always populated".
The status is derived (one table below, keyed by the derived state):

    cancel_time (or cancel_by_xai_message) set, requests still pending -> cancelling
    cancel_time (or cancel_by_xai_message) set, nothing pending        -> cancelled
    cancel_time set, no tallies                                         -> cancelling
    requests pending, or no tallies at all                              -> in_progress
    nothing pending, at least one request                               -> completed
    no requests yet                                                     -> validating

A 2xx cancel answer is an accepted cancel whatever it carries (even `{}`); the use case then reports
a batch that is not finished as `cancelling`.

A `status` string, should one ever appear, wins over the derivation. Timestamps are RFC 3339
(protobuf JSON: up to nanoseconds). `cancel_time` is both `cancelling_at` and, once nothing is
pending, `cancelled_at`. Counts: total = num_requests, completed = succeeded = num_success,
failed = num_error, canceled = num_cancelled, pending = num_pending.

Errors are `{"code": "<gRPC status description>", "error": "<message>"}`. An invalid API key is a
400 ("Client specified an invalid argument", "Incorrect API key provided: ab***yz. ...") and is
reported as the 401 `authentication_error` it means, so the next configured key is tried; a batch
that can no longer be cancelled (a FAILED_PRECONDITION description) is reported as 409. Other
statuses are kept.

Listing: `GET {base}/v1/batches?limit=100&pagination_token=` (xai-sdk `batch.list`, ListBatches over
REST: `{batches, pagination_token}`, no token on the last page; the SDK's own example pages by 100,
the server's bounds are not documented). No server-side filters, no documented order, no metadata.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote

from service.config.file import Key
from service.domain.errors import ProviderError, UpstreamUnavailable
from service.domain.model import BatchState, ListedBatch, ListQuery, RequestCounts
from service.infra.providers.base import (
    Adapter,
    UpstreamRequest,
    UpstreamResponse,
    count,
    decode_json,
    known_counts,
    next_token,
    path_segment,
    unix_seconds,
)

INVALID_KEY_PREFIX = "incorrect api key provided"
FAILED_PRECONDITION = "not in a state required"


class XAIAdapter(Adapter):
    name = "xai"
    default_base_url = "https://api.x.ai"
    accepts_direct_keys = True
    # Keys are the states derived from the batch's tallies (see the module docstring).
    statuses = {
        "empty": "validating",
        "processing": "in_progress",
        "processed": "completed",
        "cancel_pending": "cancelling",
        "cancel_done": "cancelled",
    }

    def cancel_request(self, key: Key, ref: str) -> UpstreamRequest:
        return self.request("POST", f"{self.base_url(key)}/v1/batches/{path_segment(ref)}:cancel", key)

    def retrieve_request(self, key: Key, ref: str) -> UpstreamRequest:
        """`GET /v1/batches/{id}`: the same batch the cancel answers."""
        return self.request("GET", f"{self.base_url(key)}/v1/batches/{path_segment(ref)}", key)

    def list_request(self, key: Key, query: ListQuery, page_token: str | None) -> UpstreamRequest:
        url = f"{self.base_url(key)}/v1/batches"
        return self.list_get(url, key, {"limit": self.list_page_size, "pagination_token": page_token})

    def parse_list(
        self, data: Any, *, page_token: str | None = None, query: ListQuery | None = None
    ) -> tuple[list[ListedBatch], str | None]:
        batches = self.listed(data, "batches", id_field="batch_id", created_field="create_time")
        return batches, next_token(data, "pagination_token")

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        if not isinstance(data, dict):
            raise UpstreamUnavailable(f"{self.name} answered without a batch", provider=self.name)
        has_tallies = isinstance(data.get("state"), dict)  # `{}` is all zeros (proto3 JSON omits them)
        tallies = data["state"] if has_tallies else {}
        counts = RequestCounts(
            total=count(tallies.get("num_requests")),
            completed=count(tallies.get("num_success")),
            failed=count(tallies.get("num_error")),
            succeeded=count(tallies.get("num_success")),
            canceled=count(tallies.get("num_cancelled")),
            pending=count(tallies.get("num_pending")),
        )
        cancel_time = unix_seconds(data.get("cancel_time"))
        cancelled = cancel_time is not None or bool(data.get("cancel_by_xai_message"))
        if isinstance(data.get("status"), str) and data["status"]:
            status = self.status(data["status"])
        else:
            status = self.status(_derived_state(counts if has_tallies else None, cancelled))
        return BatchState(
            id=str(data.get("batch_id") or batch_id),
            status=status,
            counts=known_counts(counts),
            cancelling_at=cancel_time,
            cancelled_at=cancel_time if status == "cancelled" else None,
        )

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        data = decode_json(response, self.name, allow_error=True)
        data = data if isinstance(data, dict) else {}
        message, code = data.get("error"), data.get("code")
        if isinstance(message, dict):  # an OpenAI-style envelope from another layer
            envelope: dict[str, Any] = message
            message, code = envelope.get("message"), envelope.get("code") or code
        if isinstance(message, str) and "%20" in message and " " not in message:
            message = unquote(message)  # some xAI builds send the message URL-encoded
        message = message if isinstance(message, str) else None
        code = code if isinstance(code, str) else None
        if response.status == 400 and message and message.lower().startswith(INVALID_KEY_PREFIX):
            return self.error(response, message, type="authentication_error", code=code, status=401)
        precondition = response.status == 400 and code is not None and FAILED_PRECONDITION in code.lower()
        return self.error(response, message, code=code, precondition=precondition)


def _derived_state(counts: RequestCounts | None, cancelled: bool) -> str:
    if counts is None:  # no tallies: not known to be finished
        return "cancel_pending" if cancelled else "processing"
    pending = counts.pending or 0
    if cancelled:
        return "cancel_pending" if pending else "cancel_done"
    if pending:
        return "processing"
    return "processed" if counts.total else "empty"
