"""Fireworks batch jobs: `POST {base}/v1/accounts/{account}/batchJobs/{id}:cancel` with body `{}`
and `Authorization: Bearer KEY`.

The cancel answers `{}`, so the state comes from a follow-up
`GET {base}/v1/accounts/{account}/batchJobs/{id}` (a `BatchJob`):

    {"name": "accounts/{account}/batchJobs/{id}", "state", "status", "createTime", "startTime",
     "endTime", "updateTime", ...}

`state` is one of STATE_UNSPECIFIED, CREATING, QUEUED, PENDING, RUNNING, COMPLETED, FAILED,
CANCELLING, CANCELLED, DELETING; `endTime` is when the job completed, failed or was cancelled
(reported as `cancelled_at` for a cancelled job). Timestamps are RFC 3339. A batch job carries no
request counts. The parsing also reads the batch *inference* job shape (`JOB_STATE_*` states and
`jobProgress` counts) so either resource answers correctly; Fireworks documents a cancel only for
`batchJobs`, so that is the resource called.

The account comes from the key (`fireworks_key_config.account_id`); a caller may also name the job
by its full resource name `accounts/{account}/batchJobs/{id}` (or with `%2F`, which the edge
decodes), in which case that account is used.

Errors: the API gateway answers `{"error": {"code": "UNAUTHORIZED", "message"}}`; the control plane
(gRPC-gateway) answers `{"code": <gRPC code>, "message", "details"}`. The HTTP status is kept, except
that a job that can no longer be cancelled (FAILED_PRECONDITION, sent as 400) answers 409, the HTTP
meaning of "not in a state that allows the call".
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from service.config import Key
from service.errors import InvalidRequest, ProviderError, UpstreamUnavailable
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

_RESOURCE_NAME = re.compile(r"^accounts/([^/]+)/batchJobs/([^/]+)$")
_JSON = {"Content-Type": "application/json"}
_EMPTY_OBJECT = b"{}"
# gRPC status codes by number, as the control plane's error body carries them.
_GRPC_CODES = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
    "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip


class JobRef(NamedTuple):
    """A job id and, when the caller gave a full resource name, the account it names."""

    job_id: str
    account: str | None = None


class FireworksAdapter(Adapter):
    name = "fireworks"
    default_base_url = "https://api.fireworks.ai"
    # BatchJob states, then the batch inference job's JOB_STATE_* ones. DELETING and the
    # UNSPECIFIED states have no unified equivalent and pass through.
    statuses = {
        "creating": "validating",
        "queued": "validating",
        "pending": "validating",
        "running": "in_progress",
        "completed": "completed",
        "failed": "failed",
        "cancelling": "cancelling",
        "cancelled": "cancelled",
        "job_state_creating": "validating",
        "job_state_creating_input_dataset": "validating",
        "job_state_validating": "validating",
        "job_state_pending": "validating",
        "job_state_idle": "validating",
        "job_state_re_queueing": "in_progress",
        "job_state_running": "in_progress",
        "job_state_writing_results": "finalizing",
        "job_state_completed": "completed",
        "job_state_failed": "failed",
        "job_state_expired": "expired",
        "job_state_cancelling": "cancelling",
        "job_state_cancelled": "cancelled",
    }

    def parse_id(self, batch_id: str) -> JobRef:
        if "/" in batch_id:
            match = _RESOURCE_NAME.match(batch_id)
            if match is None:
                raise InvalidRequest(
                    "batch_id must be a job id or a resource name accounts/{account}/batchJobs/{id}",
                    param="batch_id",
                )
            account, job_id = match.groups()
            path_segment(account)
            path_segment(job_id)
            return JobRef(job_id, account)
        path_segment(batch_id)
        return JobRef(batch_id)

    def job_url(self, key: Key, ref: JobRef) -> str:
        account = ref.account or key.account_id
        if not account:
            raise InvalidRequest(
                f"fireworks key {key.name!r} has no fireworks_key_config.account_id", provider=self.name
            )
        return f"{self.base_url(key)}/v1/accounts/{path_segment(account)}/batchJobs/{path_segment(ref.job_id)}"

    def cancel_request(self, key: Key, ref: JobRef) -> UpstreamRequest:
        headers = self.headers({**_JSON, "Authorization": f"Bearer {key.value}"})
        return UpstreamRequest("POST", f"{self.job_url(key, ref)}:cancel", headers, _EMPTY_OBJECT)

    def status_request(self, key: Key, ref: JobRef) -> UpstreamRequest:
        return UpstreamRequest("GET", self.job_url(key, ref), self.headers({"Authorization": f"Bearer {key.value}"}))

    def parse_batch(self, batch_id: str, data: Any) -> BatchState:
        if not isinstance(data, dict) or not data.get("state"):
            raise UpstreamUnavailable(f"{self.name} answered without a batch job state", provider=self.name)
        status = self.status(data["state"])
        return BatchState(
            id=batch_id,
            status=status,
            counts=_progress_counts(data.get("jobProgress")),
            cancelled_at=unix_seconds(data.get("endTime")) if status == "cancelled" else None,
        )

    def parse_error(self, response: UpstreamResponse) -> ProviderError:
        data = decode_json(response, self.name, allow_error=True)
        data = data if isinstance(data, dict) else {}
        err = data.get("error")
        if isinstance(err, str):
            err = {"message": err}
        elif not isinstance(err, dict):
            err = data
        message, code = err.get("message"), err.get("code")
        if isinstance(code, int) and not isinstance(code, bool):
            code = _GRPC_CODES[code] if 0 <= code < len(_GRPC_CODES) else str(code)
        code = code if isinstance(code, str) and code else None
        status = response.status
        if status == 400 and code == "FAILED_PRECONDITION":
            status = 409
        return ProviderError(
            message if isinstance(message, str) and message else f"{self.name} answered HTTP {response.status}",
            status_code=status,
            type="provider_error",
            code=code,
            provider=self.name,
        )


def _progress_counts(progress: Any) -> RequestCounts | None:
    """A batch inference job's `jobProgress` (int64 counts may arrive as strings)."""
    if not isinstance(progress, dict):
        return None
    succeeded = count(progress.get("successfullyProcessedRequests"))
    counts = RequestCounts(
        total=count(progress.get("totalInputRequests")),
        completed=succeeded,
        failed=count(progress.get("failedRequests")),
        succeeded=succeeded,
    )
    return None if counts == RequestCounts() else counts
