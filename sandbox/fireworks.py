"""Simulated Fireworks batch inference jobs API (control plane): read only.

    GET {prefix}/v1/accounts/{account}/batchInferenceJobs/{id} -> the BatchInferenceJob

Fireworks documents create, list, get and delete for LLM batch inference jobs and no cancel (the
official `fireworks-ai` SDK's `resources/batch_inference_jobs.py` has no cancel method). Its
`batchJobs/{id}:cancel` belongs to node-pool compute jobs, not LLM batches. batchgate therefore
answers a Fireworks cancel with 400 `unsupported_operation` and never calls this simulator; it is
here so tests can show that no call is made, and so a cancel path sent anyway gets Fireworks' 404.

Auth is `Authorization: Bearer KEY`. The API gateway refuses a missing or wrong key with
`{"error": {"code": "UNAUTHORIZED", "message"}}`; the control plane (gRPC-gateway) answers its own
errors as `{"code": <gRPC code>, "message", "details": []}`: 403 PERMISSION_DENIED for an account
other than the sandbox's (`account_id`), 404 NOT_FOUND. Proto3 JSON: camelCase fields, unset
fields omitted, RFC 3339 timestamps with nanoseconds.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar
from uuid import uuid4

from aiohttp import web

from sandbox.core import Handler, ProviderSim, SimBatch, bearer_token, json_response

# The batch inference job's JobState has no cancelling state (nothing cancels one through the API).
JOB_STATE = {
    "validating": "JOB_STATE_VALIDATING",
    "in_progress": "JOB_STATE_RUNNING",
    "finalizing": "JOB_STATE_WRITING_RESULTS",
    "completed": "JOB_STATE_COMPLETED",
    "failed": "JOB_STATE_FAILED",
    "expired": "JOB_STATE_EXPIRED",
    "cancelling": "JOB_STATE_RUNNING",
    "cancelled": "JOB_STATE_CANCELLED",
}
# gRPC code -> (HTTP status, name) as gRPC-gateway maps them.
NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED = 5, 7, 8
HTTP_STATUS_CODES = {400: 3, 403: 7, 404: 5, 409: 10, 429: 8, 500: 13, 501: 12, 503: 14, 504: 4}


class FireworksSim(ProviderSim):
    name = "fireworks"
    prefix = "/fireworks"
    default_key = "fw_sandbox_fireworks_key"
    # The account the sandbox keys belong to.
    account_id: ClassVar[str] = "sandbox-account"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [("GET", "/v1/accounts/{account_id}/batchInferenceJobs/{job_id}", self.retrieve)]

    def answer(self, request: web.Request, *, cancel: bool) -> web.Response:
        key = bearer_token(request)
        if not self.sim.key_ok(self.name, key):
            message = "The API key you provided is invalid." if key else "Missing API key in the Authorization header."
            return self.gateway_error(401, "UNAUTHORIZED", message)
        account, job_id = request.match_info["account_id"], request.match_info["job_id"]
        name = f"accounts/{account}/batchInferenceJobs/{job_id}"
        if account != self.account_id:
            return self.rpc_error(403, PERMISSION_DENIED, f"permission denied on account {account!r}")
        batch = self.store.get(job_id, key)
        if batch is None:
            return self.rpc_error(404, NOT_FOUND, f'batch inference job "{name}" not found')
        return json_response(self.render_inference_job(batch, name), headers=self.response_headers())

    def render_inference_job(self, batch: SimBatch, name: str) -> dict[str, Any]:
        """The job as a BatchInferenceJob: JOB_STATE_* and progress counters."""
        counts = batch.request_counts
        processed = counts["completed"] + counts["failed"]
        times = [t for t in (batch.created_at, batch.in_progress_at, batch.cancelling_at, batch.cancelled_at) if t]
        return {
            "name": name,
            "displayName": "sandbox batch job",
            "createTime": _rfc3339(batch.created_at),
            "createdBy": "sandbox@example.com",
            "state": JOB_STATE[batch.status],
            "model": "accounts/fireworks/models/llama-v3p1-8b-instruct",
            "inputDatasetId": "sandbox-input",
            "outputDatasetId": "sandbox-output",
            "jobProgress": {
                "percent": processed * 100 // counts["total"] if counts["total"] else 0,
                "totalInputRequests": counts["total"],
                "successfullyProcessedRequests": counts["completed"],
                "failedRequests": counts["failed"],
                "totalProcessedRequests": processed,
            },
            "updateTime": _rfc3339(max(times)),
        }

    def rpc_error(self, status: int, code: int, message: str) -> web.Response:
        return json_response({"code": code, "message": message, "details": []}, status, self.response_headers())

    def gateway_error(self, status: int, code: str, message: str) -> web.Response:
        return json_response({"error": {"code": code, "message": message}}, status, self.response_headers())

    def status_error(self, status: int) -> web.Response:
        if status == 429:
            return self.rpc_error(429, RESOURCE_EXHAUSTED, "rate limit exceeded, please retry later")
        return self.rpc_error(status, HTTP_STATUS_CODES.get(status, 2), f"request failed with HTTP {status}")

    async def not_found_route(self, request: web.Request) -> web.Response:
        return self.rpc_error(404, NOT_FOUND, f"Not Found: {request.method} {request.path[len(self.prefix) :]}")

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": str(uuid4())}


def _rfc3339(unix: int | None) -> str | None:
    """Proto3 JSON timestamp: RFC 3339 in UTC with nanoseconds."""
    if not unix:
        return None
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
