"""Together batches: `POST {base}/v1/batches/{id}/cancel` with `Authorization: Bearer KEY`.

The cancel answers the BatchJob itself (Together OpenAPI `BatchJob`):

    {"id", "user_id", "input_file_id", "file_size_bytes", "status", "job_deadline", "created_at",
     "endpoint", "progress", "model_id", "output_file_id", "error_file_id", "error", "completed_at"}

Statuses are uppercase (VALIDATING, IN_PROGRESS, COMPLETED, FAILED, EXPIRED, CANCELLED; older SDKs
also list CANCELING). A cancel goes straight to CANCELLED, with no interim state. Timestamps are
RFC 3339. There are no request counts, only `progress` (0-100), so counts are omitted rather than
invented. A CANCELLED job's `completed_at` (the time it ended) is reported as `cancelled_at`.

Errors: the batch API documents `{"error": "<message>"}` for 400/401/403/404/500 (cancelling a
finished job is a 400); Together's API gateway answers auth failures in OpenAI's envelope
`{"error": {"message", "type", "param", "code"}}` (401 `invalid_api_key`). Both are read; the HTTP
status is kept.

Listing: `GET {base}/v1/batches` answers a plain JSON array of every BatchJob (together SDK
`list_batches`): one page, no parameters, no documented order, no metadata.
"""

from __future__ import annotations

from typing import Any

from service.config.file import Key
from service.domain.errors import ProviderError, UpstreamUnavailable
from service.domain.model import BatchState, ListedBatch, ListQuery
from service.infra.providers.base import (
    Adapter,
    UpstreamRequest,
    UpstreamResponse,
    decode_json,
    path_segment,
    unix_seconds,
)


class TogetherAdapter(Adapter):
    name = "together"
    default_base_url = "https://api.together.xyz"
    accepts_direct_keys = True
    statuses = {
        "validating": "validating",
        "in_progress": "in_progress",
        "completed": "completed",
        "failed": "failed",
        "expired": "expired",
        "canceling": "cancelling",
        "cancelling": "cancelling",
        "cancelled": "cancelled",
        "canceled": "cancelled",
    }

    def cancel_request(self, key: Key, ref: str) -> UpstreamRequest:
        return self.request("POST", f"{self.base_url(key)}/v1/batches/{path_segment(ref)}/cancel", key)

    def retrieve_request(self, key: Key, ref: str) -> UpstreamRequest:
        """`GET /v1/batches/{id}`: the same BatchJob the cancel answers."""
        return self.request("GET", f"{self.base_url(key)}/v1/batches/{path_segment(ref)}", key)

    def list_request(self, key: Key, query: ListQuery, page_token: str | None) -> UpstreamRequest:
        return self.list_get(f"{self.base_url(key)}/v1/batches", key, {})

    def parse_list(
        self, data: Any, *, page_token: str | None = None, query: ListQuery | None = None
    ) -> tuple[list[ListedBatch], str | None]:
        return self.listed(data, None), None

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        if not isinstance(data, dict) or not data.get("status"):
            raise UpstreamUnavailable(f"{self.name} answered without a batch job", provider=self.name)
        status = self.status(data["status"])
        return BatchState(
            id=str(data.get("id") or batch_id),
            status=status,
            counts=None,  # Together reports only `progress`, never request counts
            cancelled_at=unix_seconds(data.get("completed_at")) if status == "cancelled" else None,
        )

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        data = decode_json(response, self.name, allow_error=True)
        err = data.get("error") if isinstance(data, dict) else None
        if isinstance(err, str):
            err = {"message": err}
        elif not isinstance(err, dict):
            err = data if isinstance(data, dict) else {}
        return self.error(
            response, err.get("message"), type=err.get("type"), code=err.get("code"), param=err.get("param")
        )
