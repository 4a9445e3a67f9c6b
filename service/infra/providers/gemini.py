"""Gemini API batches: `POST {base}/v1beta/batches/{id}:cancel`, `GET {base}/v1beta/batches/{id}`,
authenticated with `x-goog-api-key`. Google's shared error envelope and vocabulary are in google.py.

The GET answers a long-running Operation whose `metadata` is the GenerateContentBatch (`state`
BATCH_STATE_*, `batchStats` with int64-as-string counts, `createTime`/`updateTime`/`endTime` RFC
3339 with 0/3/6/9 fraction digits). The batch is also accepted at the top level or under
`response`, and `state` as BATCH_STATE_* or JOB_STATE_* (what the google-genai SDK converts it to).
Gemini has no interim cancelling state: a batch still PENDING/RUNNING right after an accepted cancel
is reported as `cancelling` (the use case's rule for every provider); `cancelled_at` is `endTime`
(else `updateTime`) of a CANCELLED batch; there is no cancel-request time to report.

IDs: `batches/x` (Envoy decodes `%2F`), `batches-x` (the seed gateway's encoding) and bare `x` all
address batch `x`.

Listing: `GET {base}/v1beta/batches?pageSize=1000&pageToken=` (google-genai `batches.list`) answers
`{operations: [Operation], nextPageToken}` (`{}` when there are none: proto3 JSON leaves empty
lists out); each Operation's `metadata` is the batch and its `name` (`batches/x`) the listed id.
Gemini documents no order, no server-side filter (the SDK refuses `filter` outside Vertex) and no
page-size bounds (Google APIs coerce a larger one down, AIP-158); a batch has no labels.
"""

from __future__ import annotations

from typing import Any

from service.config.file import Key
from service.domain.errors import UpstreamUnavailable
from service.domain.model import BatchState, ListedBatch, ListQuery, RequestCounts
from service.infra.providers.base import UpstreamRequest, next_token, page_items, path_segment, unix_seconds
from service.infra.providers.google import BATCH_STATES, JOB_STATES, GoogleAdapter, stats


def _gemini_batch(data: Any) -> dict[str, Any] | None:
    """The GenerateContentBatch inside a batches.get answer: the Operation's `metadata` (documented),
    the answer itself, or the Operation's `response` (seen in the wild)."""
    if not isinstance(data, dict):
        return None
    for candidate in (data.get("metadata"), data, data.get("response")):
        if isinstance(candidate, dict) and isinstance(candidate.get("state"), str) and candidate["state"]:
            return candidate
    return None


class GeminiAdapter(GoogleAdapter):
    name = "gemini"
    default_base_url = "https://generativelanguage.googleapis.com"
    api_version = "v1beta"
    statuses = {**BATCH_STATES, **JOB_STATES}
    accepts_direct_keys = True
    list_page_size = 1000

    def parse_id(self, batch_id: str) -> str:
        """`batches/x`, `batches-x` or `x` -> `x` (a bare id that itself starts with `batches-` is
        read as the seed's encoding: Gemini batch ids are lowercase alphanumerics)."""
        bare = batch_id
        for prefix in ("batches/", "batches-"):
            if bare.startswith(prefix):
                bare = bare[len(prefix) :]
                break
        path_segment(bare)
        return bare

    def _url(self, key: Key, ref: str, suffix: str = "") -> str:
        return f"{self.base_url(key)}/{self.api_version}/batches/{path_segment(ref)}{suffix}"

    def auth_headers(self, key: Key) -> dict[str, str]:
        return {"x-goog-api-key": key.value}

    def cancel_request(self, key: Key, ref: str) -> UpstreamRequest:
        # "The request body must be empty."
        return self.request("POST", self._url(key, ref, ":cancel"), key)

    def status_request(self, key: Key, ref: str) -> UpstreamRequest:
        return self.request("GET", self._url(key, ref), key)

    def list_request(self, key: Key, query: ListQuery, page_token: str | None) -> UpstreamRequest:
        url = f"{self.base_url(key)}/{self.api_version}/batches"
        return self.list_get(url, key, {"pageSize": self.list_page_size, "pageToken": page_token})

    def parse_list(
        self, data: Any, *, page_token: str | None = None, query: ListQuery | None = None
    ) -> tuple[list[ListedBatch], str | None]:
        batches = []
        for operation in page_items(data, "operations", self.name):
            batch = _gemini_batch(operation)
            name = operation.get("name") if isinstance(operation, dict) else None
            name = name or (batch.get("name") if batch else None)
            if not isinstance(name, str) or not name:
                raise UpstreamUnavailable(f"{self.name} listed a batch without its name", provider=self.name)
            state = self.parse_batch(name, operation)
            state.created_at = unix_seconds(batch.get("createTime")) if batch else None
            batches.append(ListedBatch(state))
        return batches, next_token(data, "nextPageToken")

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        batch = _gemini_batch(data)
        if batch is None:
            # A finished Operation without metadata: error code 1 is google.rpc.Code.CANCELLED.
            error = data.get("error") if isinstance(data, dict) else None
            if isinstance(error, dict) and error.get("code") == 1 and data.get("done") is True:
                return BatchState(id=batch_id, status="cancelled")
            raise UpstreamUnavailable(f"{self.name} answered without a batch state", provider=self.name)
        status = self.status(batch["state"])
        counts_raw = stats(
            batch.get("batchStats"),
            ("requestCount", "successfulRequestCount", "failedRequestCount", "pendingRequestCount"),
        )
        counts = None
        if counts_raw is not None:
            total, succeeded, failed, pending = counts_raw
            counts = RequestCounts(
                total=total, completed=succeeded, failed=failed, succeeded=succeeded, pending=pending
            )
        cancelled_at = None
        if status == "cancelled":
            cancelled_at = unix_seconds(batch.get("endTime")) or unix_seconds(batch.get("updateTime"))
        return BatchState(id=batch_id, status=status, counts=counts, cancelled_at=cancelled_at)
