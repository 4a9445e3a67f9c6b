"""Cohere batches (API v2): `POST {base}/v2/batches/{id}:cancel` with `Authorization: Bearer KEY`.

The cancel answers an undocumented object (`CancelBatchResponse`, in practice `{}`), so the state
comes from a follow-up `GET {base}/v2/batches/{id}`, which answers `{"batch": Batch}` (official
cohere SDK `GetBatchResponse`):

    {"id", "name", "creator_id", "org_id", "status", "created_at", "updated_at",
     "input_dataset_id", "output_dataset_id", "input_tokens", "output_tokens", "model",
     "num_records", "num_successful_records", "num_failed_records", "status_reason"}

`status` is BATCH_STATUS_{UNSPECIFIED, QUEUED, IN_PROGRESS, CANCELING, COMPLETED, FAILED,
CANCELED}. Timestamps are RFC 3339; the batch has no cancel timestamp (`updated_at` moves with any
change), so none is reported. Counts: total = num_records, completed = succeeded =
num_successful_records, failed = num_failed_records (int64 values may arrive as strings).

Errors are `{"id"?, "message"}` (401 `invalid api token`, 404, 400 for a batch that cannot be
cancelled); the HTTP status is kept.

Listing: `GET {base}/v2/batches?page_size=1000&page_token=` (cohere SDK `batches.list`: at most 50
without `page_size`, 1000 at most, answer `{batches, next_page_token}`, no token on the last page).
No server-side filters, no documented order (its `order_by` names a field, not a direction), and a
batch has no metadata.
"""

from __future__ import annotations

from typing import Any

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
)


class CohereAdapter(Adapter):
    name = "cohere"
    default_base_url = "https://api.cohere.com"
    accepts_direct_keys = True
    list_page_size = 1000
    statuses = {
        "batch_status_queued": "validating",
        "batch_status_in_progress": "in_progress",
        "batch_status_canceling": "cancelling",
        "batch_status_completed": "completed",
        "batch_status_failed": "failed",
        "batch_status_canceled": "cancelled",
    }

    def batch_url(self, key: Key, ref: str) -> str:
        return f"{self.base_url(key)}/v2/batches/{path_segment(ref)}"

    def cancel_request(self, key: Key, ref: str) -> UpstreamRequest:
        return self.request("POST", f"{self.batch_url(key, ref)}:cancel", key)

    def status_request(self, key: Key, ref: str) -> UpstreamRequest:
        return self.request("GET", self.batch_url(key, ref), key)

    def list_request(self, key: Key, query: ListQuery, page_token: str | None) -> UpstreamRequest:
        url = f"{self.base_url(key)}/v2/batches"
        return self.list_get(url, key, {"page_size": self.list_page_size, "page_token": page_token})

    def parse_list(
        self, data: Any, *, page_token: str | None = None, query: ListQuery | None = None
    ) -> tuple[list[ListedBatch], str | None]:
        return self.listed(data, "batches"), next_token(data, "next_page_token")

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        batch = data.get("batch") if isinstance(data, dict) and isinstance(data.get("batch"), dict) else data
        if not isinstance(batch, dict) or not batch.get("status"):
            raise UpstreamUnavailable(f"{self.name} answered without a batch", provider=self.name)
        succeeded = count(batch.get("num_successful_records"))
        counts = RequestCounts(
            total=count(batch.get("num_records")),
            completed=succeeded,
            failed=count(batch.get("num_failed_records")),
            succeeded=succeeded,
        )
        return BatchState(
            id=str(batch.get("id") or batch_id),
            status=self.status(batch["status"]),
            counts=known_counts(counts),
        )

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        data = decode_json(response, self.name, allow_error=True)
        data = data if isinstance(data, dict) else {}
        message = data.get("message")
        if not isinstance(message, str) or not message:
            err = data.get("error")
            message = err.get("message") if isinstance(err, dict) else err
        return self.error(response, message)
