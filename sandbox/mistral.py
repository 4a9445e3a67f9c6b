"""Simulated Mistral batch jobs API: cancel and retrieve.

    POST {prefix}/v1/batch/jobs/{job_id}/cancel   -> the BatchJob
    GET  {prefix}/v1/batch/jobs/{job_id}          -> the BatchJob

Auth is `Authorization: Bearer KEY`; a missing or wrong key gets the API gateway's 401
`{"message": "Unauthorized", "request_id": ...}`. Job ids are UUIDs: any other id is refused with
FastAPI's 422 validation error (`{"detail": [{"type": "uuid_parsing", "loc": ["path", "job_id"],
...}]}`) unless `validate_uuid` is off. Other service errors are `{"detail": "..."}`.

A cancel moves a running job to CANCELLATION_REQUESTED, which reads as CANCELLED once the batch's
cancel delay has passed. Whether Mistral cancels immediately is not documented: with
`cancel_immediately` the cancel answers CANCELLED straight away. A finished job cannot be
cancelled (400). Timestamps are unix seconds.
"""

from __future__ import annotations

import uuid
from secrets import token_hex
from time import time
from typing import Any, ClassVar
from uuid import UUID, uuid4

from aiohttp import web

from sandbox.core import Handler, NotCancellable, ProviderSim, SimBatch, bearer_token, json_response, reason

STATUS = {
    "validating": "QUEUED",
    "in_progress": "RUNNING",
    "finalizing": "RUNNING",
    "completed": "SUCCESS",
    "failed": "FAILED",
    "expired": "TIMEOUT_EXCEEDED",
    "cancelling": "CANCELLATION_REQUESTED",
    "cancelled": "CANCELLED",
}
# Answers of the API gateway (auth, rate limits, overload) use the {"message", "request_id"} envelope.
GATEWAY_MESSAGES = {401: "Unauthorized", 429: "Requests rate limit exceeded", 503: "Service unavailable"}


class MistralSim(ProviderSim):
    name = "mistral"
    prefix = "/mistral"
    default_key = "sandbox-mistral-key"
    finished_cancel_status = 400

    @classmethod
    def new_batch_id(cls) -> str:
        return str(uuid.uuid4())  # Mistral job ids are UUIDs

    # Unconfirmed upstream behaviour, switchable per test (e.g. monkeypatch.setattr on the class).
    cancel_immediately: ClassVar[bool] = False
    validate_uuid: ClassVar[bool] = True

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/batch/jobs/{job_id}/cancel", self.cancel),
            ("GET", "/v1/batch/jobs/{job_id}", self.retrieve),
        ]

    def answer(self, request: web.Request, *, cancel: bool) -> web.Response:
        if not self.sim.key_ok(self.name, bearer_token(request)):
            return self.gateway_error(401)
        job_id = request.match_info["job_id"]
        if self.validate_uuid and not _is_uuid(job_id):
            return self.uuid_error(job_id)
        batch = self.store.get(job_id)
        if batch is None:
            return self.detail(404, "Batch job not found")
        if cancel:
            try:
                batch.cancel(time(), immediately=self.cancel_immediately)
            except NotCancellable:
                return self.detail(400, f"Batch job {job_id} is {STATUS[batch.status]} and cannot be cancelled")
        return json_response(self.render(batch), headers=self.response_headers())

    def render(self, batch: SimBatch) -> dict[str, Any]:
        """The BatchJob: Mistral's `completed_requests` counts successes and failures together."""
        data, counts = batch.to_dict(), batch.request_counts
        ended = data["completed_at"] or data["failed_at"] or data["expired_at"] or data["cancelled_at"]
        return {
            "id": batch.id,
            "object": "batch",
            "input_files": ["8e2f5c9a-1b7d-4c1e-9f0a-5d6b7c8e9f01"],
            "metadata": None,
            "endpoint": "/v1/chat/completions",
            "model": "mistral-small-latest",
            "agent_id": None,
            "output_file": None,
            "error_file": None,
            "errors": [],
            "outputs": None,
            "status": STATUS[batch.status],
            "created_at": batch.created_at,
            "total_requests": counts["total"],
            "completed_requests": counts["completed"] + counts["failed"],
            "succeeded_requests": counts["completed"],
            "failed_requests": counts["failed"],
            "started_at": batch.in_progress_at,
            "completed_at": ended,
        }

    def detail(self, status: int, message: str) -> web.Response:
        return json_response({"detail": message}, status, self.response_headers())

    def gateway_error(self, status: int) -> web.Response:
        body = {"message": GATEWAY_MESSAGES.get(status, reason(status)), "request_id": token_hex(16)}
        return json_response(body, status, self.response_headers())

    def uuid_error(self, job_id: str) -> web.Response:
        error = {
            "type": "uuid_parsing",
            "loc": ["path", "job_id"],
            "msg": "Input should be a valid UUID, invalid character: expected an optional prefix of `urn:uuid:` "
            "followed by [0-9a-fA-F-]",
            "input": job_id,
        }
        return json_response({"detail": [error]}, 422, self.response_headers())

    def status_error(self, status: int) -> web.Response:
        if status in GATEWAY_MESSAGES:
            return self.gateway_error(status)
        return self.detail(status, reason(status))

    async def not_found_route(self, request: web.Request) -> web.Response:
        return self.detail(404, "Not Found")

    def response_headers(self) -> dict[str, str]:
        return {"mistral-correlation-id": str(uuid4())}


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True
