"""Simulated Fireworks batch jobs API (control plane): cancel and retrieve.

    POST {prefix}/v1/accounts/{account}/batchJobs/{id}:cancel   body `{}` (or empty) -> `{}`
    GET  {prefix}/v1/accounts/{account}/batchJobs/{id}          -> the BatchJob
    GET  {prefix}/v1/accounts/{account}/batchInferenceJobs/{id} -> the same job as a batch inference
                                                                   job (JOB_STATE_*, jobProgress)

Auth is `Authorization: Bearer KEY`. The API gateway refuses a missing or wrong key with
`{"error": {"code": "UNAUTHORIZED", "message"}}`; the control plane (gRPC-gateway) answers its own
errors as `{"code": <gRPC code>, "message", "details": []}`: 403 PERMISSION_DENIED for an account
other than the key's (`account_id`), 404 NOT_FOUND, 400 FAILED_PRECONDITION for a job that already
finished, 400 INVALID_ARGUMENT for a body that is not a JSON object.

A cancel moves a running job to CANCELLING, which reads as CANCELLED once the batch's cancel delay
has passed; whether Fireworks cancels immediately is not documented, so `cancel_immediately`
makes it CANCELLED at once. Proto3 JSON: camelCase fields, unset fields omitted, RFC 3339
timestamps with nanoseconds.
"""

from __future__ import annotations

from datetime import datetime, timezone
from time import time
from typing import Any, ClassVar
from uuid import uuid4

import orjson
from aiohttp import web

from sandbox.core import Handler, NotCancellable, ProviderSim, SimBatch, bearer_token, json_response

STATE = {
    "validating": "PENDING",
    "in_progress": "RUNNING",
    "finalizing": "RUNNING",
    "completed": "COMPLETED",
    "failed": "FAILED",
    "expired": "FAILED",  # a batch job has no EXPIRED state
    "cancelling": "CANCELLING",
    "cancelled": "CANCELLED",
}
# The batch inference job's JobState has no cancelling state: such a job still reads as running.
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
INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED, FAILED_PRECONDITION = 3, 5, 7, 8, 9
HTTP_STATUS_CODES = {400: 3, 403: 7, 404: 5, 409: 10, 429: 8, 500: 13, 501: 12, 503: 14, 504: 4}


class FireworksSim(ProviderSim):
    name = "fireworks"
    prefix = "/fireworks"
    default_key = "fw_sandbox_fireworks_key"
    # The account the sandbox keys belong to (fireworks_key_config.account_id).
    account_id: ClassVar[str] = "sandbox-account"
    # Unconfirmed upstream behaviour, switchable per test (e.g. monkeypatch.setattr on the class).
    cancel_immediately: ClassVar[bool] = False

    @classmethod
    def gateway_config(cls, base_url: str, key: str) -> dict[str, Any]:
        config = super().gateway_config(base_url, key)
        config["keys"][0]["fireworks_key_config"] = {"account_id": cls.account_id}
        return config

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/accounts/{account_id}/batchJobs/{job_id:[^/]+}:cancel", self.cancel),
            ("GET", "/v1/accounts/{account_id}/batchJobs/{job_id}", self.retrieve),
            ("GET", "/v1/accounts/{account_id}/batchInferenceJobs/{job_id}", self.retrieve_inference_job),
        ]

    async def cancel(self, request: web.Request) -> web.Response:
        body = await request.read()
        if body.strip() and not _is_json_object(body):
            return self.rpc_error(400, INVALID_ARGUMENT, "invalid character in request body: expected a JSON object")
        return self.answer(request, cancel=True)

    async def retrieve_inference_job(self, request: web.Request) -> web.Response:
        return self.answer(request, cancel=False, collection="batchInferenceJobs")

    def answer(self, request: web.Request, *, cancel: bool, collection: str = "batchJobs") -> web.Response:
        key = bearer_token(request)
        if not self.sim.key_ok(self.name, key):
            message = "The API key you provided is invalid." if key else "Missing API key in the Authorization header."
            return self.gateway_error(401, "UNAUTHORIZED", message)
        account, job_id = request.match_info["account_id"], request.match_info["job_id"]
        name = f"accounts/{account}/{collection}/{job_id}"
        if account != self.account_id:
            return self.rpc_error(403, PERMISSION_DENIED, f"permission denied on account {account!r}")
        batch = self.store.get(job_id)
        if batch is None:
            return self.rpc_error(404, NOT_FOUND, f'batch job "{name}" not found')
        if not cancel:
            render = self.render if collection == "batchJobs" else self.render_inference_job
            return json_response(render(batch, name), headers=self.response_headers())
        try:
            batch.cancel(time(), immediately=self.cancel_immediately)
        except NotCancellable:
            message = f"batch job is in state {STATE[batch.status]} and cannot be cancelled"
            return self.rpc_error(400, FAILED_PRECONDITION, message)
        return json_response({}, headers=self.response_headers())

    def render(self, batch: SimBatch, name: str) -> dict[str, Any]:
        """A BatchJob in proto3 JSON: unset fields are left out."""
        data = batch.to_dict()
        ended = data["completed_at"] or data["failed_at"] or data["expired_at"] or data["cancelled_at"]
        times = [t for t in (batch.created_at, batch.in_progress_at, batch.cancelling_at, ended) if t]
        job = {
            "name": name,
            "displayName": "sandbox batch job",
            "createTime": _rfc3339(batch.created_at),
            "startTime": _rfc3339(batch.in_progress_at),
            "endTime": _rfc3339(ended),
            "createdBy": "sandbox@example.com",
            "state": STATE[batch.status],
            "status": "batch job expired" if batch.status == "expired" else None,
            "nodePoolId": "sandbox-pool",
            "updateTime": _rfc3339(max(times)),
        }
        return {field: value for field, value in job.items() if value is not None}

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


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(orjson.loads(body), dict)
    except orjson.JSONDecodeError:
        return False


def _rfc3339(unix: int | None) -> str | None:
    """Proto3 JSON timestamp: RFC 3339 in UTC with nanoseconds."""
    if not unix:
        return None
    return datetime.fromtimestamp(unix, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")
