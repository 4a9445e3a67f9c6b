"""Mistral batch jobs: `POST {base}/v1/batch/jobs/{job_id}/cancel` with `Authorization: Bearer KEY`.

The cancel answers the BatchJob itself (mistralai SDK `BatchJob`, formerly `BatchJobOut`), so no
follow-up read is needed:

    {"id", "object": "batch", "input_files", "endpoint", "model", "errors": [{"message", "count"}],
     "status", "created_at", "started_at", "completed_at",
     "total_requests", "completed_requests", "succeeded_requests", "failed_requests", ...}

Timestamps are unix seconds. `status` is an open enum (QUEUED, RUNNING, SUCCESS, FAILED,
TIMEOUT_EXCEEDED, CANCELLATION_REQUESTED, CANCELLED): new values pass through lowercased. Whether a
cancel is immediate is not documented: the answer says either CANCELLATION_REQUESTED (reported as
`cancelling`) or CANCELLED. The job has no cancel timestamps; a CANCELLED job's `completed_at` (the
time it ended) is reported as `cancelled_at`, as Anthropic's `ended_at` is.

Errors come in two envelopes: the API gateway's `{"message", "request_id"}` (401 `Unauthorized`,
429) and the service's `{"detail": ...}`, where `detail` is a string or, for a 422, a list of
validation errors `[{"loc", "msg", "type"}]` (a job id that is not a UUID). The HTTP status is kept.

Listing: `GET {base}/v1/batch/jobs?page=N&page_size=100&order_by=-created` (mistralai SDK
`batch.jobs.list`: pages numbered from 0, default size 100, answer `{object: list, data, total}`,
newest first), with the server's `status` (repeated, one per Mistral status the query's unified
statuses map to) and `created_after` (one second before the query's bound: whether Mistral's is
inclusive is not documented; the gateway's own filter applies the exact one). The SDK sends the
`metadata` filter form-exploded (each pair as a parameter of its own), which cannot be told apart
from other parameters, so it is not sent: each job's `metadata` is matched by the gateway. Pages
are asked until `total` is reached or a page comes back empty.
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
    path_segment,
    rfc3339,
    unix_seconds,
)


class MistralAdapter(Adapter):
    name = "mistral"
    default_base_url = "https://api.mistral.ai"
    accepts_direct_keys = True
    lists_newest_first = True
    keeps_metadata = True
    list_page_size = 100
    statuses = {
        "queued": "validating",
        "running": "in_progress",
        "success": "completed",
        "failed": "failed",
        "timeout_exceeded": "expired",
        "cancellation_requested": "cancelling",
        "cancelled": "cancelled",
    }

    def cancel_request(self, key: Key, ref: str) -> UpstreamRequest:
        return self.request("POST", f"{self.base_url(key)}/v1/batch/jobs/{path_segment(ref)}/cancel", key)

    def retrieve_request(self, key: Key, ref: str) -> UpstreamRequest:
        """`GET /v1/batch/jobs/{id}`: the same BatchJob the cancel answers."""
        return self.request("GET", f"{self.base_url(key)}/v1/batch/jobs/{path_segment(ref)}", key)

    def list_request(self, key: Key, query: ListQuery, page_token: str | None) -> UpstreamRequest:
        params: list[tuple[str, Any]] = [
            ("page", int(page_token or 0)),
            ("page_size", self.list_page_size),
            ("order_by", "-created"),
        ]
        wanted = sorted(raw.upper() for raw, unified in self.statuses.items() if unified in query.statuses)
        if len(wanted) < len(self.statuses):
            params += [("status", status) for status in wanted]
        if query.created_after > 1:
            params.append(("created_after", rfc3339(query.created_after - 1)))
        return self.list_get(f"{self.base_url(key)}/v1/batch/jobs", key, params)

    def parse_list(
        self, data: Any, *, page_token: str | None = None, query: ListQuery | None = None
    ) -> tuple[list[ListedBatch], str | None]:
        batches = self.listed(data, "data", metadata_field="metadata")
        page = int(page_token or 0)
        total = count(data.get("total"))
        more = (page + 1) * self.list_page_size < total if total is not None else len(batches) >= self.list_page_size
        return batches, str(page + 1) if batches and more else None

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        if not isinstance(data, dict) or not data.get("status"):
            raise UpstreamUnavailable(f"{self.name} answered without a batch job", provider=self.name)
        status = self.status(data["status"])
        counts = RequestCounts(
            total=count(data.get("total_requests")),
            # Mistral's completed_requests counts failures too; the unified `completed` means
            # succeeded, as OpenAI's does.
            completed=count(data.get("succeeded_requests")),
            failed=count(data.get("failed_requests")),
            succeeded=count(data.get("succeeded_requests")),
        )
        return BatchState(
            id=str(data.get("id") or batch_id),
            status=status,
            counts=known_counts(counts),
            cancelled_at=unix_seconds(data.get("completed_at")) if status == "cancelled" else None,
        )

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        data = decode_json(response, self.name, allow_error=True)
        data = data if isinstance(data, dict) else {}
        message, error_type = _message(data), data.get("type")
        param = data.get("param") if isinstance(data.get("param"), str) else None
        detail = data.get("detail")
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            # Validation errors: the first one names the offending field (`["path", "job_id"]`).
            loc = detail[0].get("loc")
            if isinstance(loc, list) and loc and isinstance(loc[-1], str):
                param = loc[-1]
            error_type = error_type or "invalid_request_error"
        code = data.get("code")
        numeric_code = isinstance(code, int) and not isinstance(code, bool)
        return self.error(response, message, type=error_type, code=str(code) if numeric_code else code, param=param)


def _message(data: dict[str, Any]) -> str | None:
    """The human message of either envelope; validation errors are joined as `field: msg`."""
    for name in ("message", "detail"):
        value = data.get(name)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, list):
            parts = []
            for item in value:
                if isinstance(item, dict) and isinstance(item.get("msg"), str):
                    loc = item.get("loc")
                    where = ".".join(str(p) for p in loc) if isinstance(loc, list) else ""
                    parts.append(f"{where}: {item['msg']}" if where else item["msg"])
            if parts:
                return "; ".join(parts)
        if isinstance(value, dict) and isinstance(inner := value.get("message"), str):
            return inner
    err = data.get("error")
    if isinstance(err, dict) and isinstance(inner := err.get("message"), str):
        return inner
    return None
