"""Simulated Together batches API: cancel, retrieve and list.

    POST {prefix}/v1/batches/{id}/cancel   -> the BatchJob, already CANCELLED
    GET  {prefix}/v1/batches/{id}          -> the BatchJob
    GET  {prefix}/v1/batches               -> a plain JSON array of every BatchJob, newest first

The list takes no parameters and has no pages (together SDK's `list_batches`); its order is not
documented. A BatchJob has no metadata.

Auth is `Authorization: Bearer KEY`; the API gateway refuses a missing or wrong key with a 401 in
OpenAI's envelope (`invalid_api_key`). The batch service's own errors are `{"error": "<message>"}`
(its OpenAPI `BatchErrorResponse`): 404 for an unknown job, 400 for a job that already finished.

A cancel goes straight to CANCELLED (no interim state). Statuses are uppercase, timestamps RFC 3339
with microseconds, and there are no request counts: only `progress` (0-100).
"""

from __future__ import annotations

from datetime import UTC, datetime
from time import time
from typing import Any
from uuid import uuid4

from aiohttp import web

from sandbox.core import (
    BATCH_LIFETIME_S,
    Handler,
    NotCancellable,
    ProviderSim,
    SimBatch,
    bearer_token,
    json_response,
    reason,
)

STATUS = {
    "validating": "VALIDATING",
    "in_progress": "IN_PROGRESS",
    "finalizing": "IN_PROGRESS",
    "completed": "COMPLETED",
    "failed": "FAILED",
    "expired": "EXPIRED",
    # Only a batch seeded as `cancelling` reads so; a cancel through the API never leaves one there.
    "cancelling": "CANCELING",
    "cancelled": "CANCELLED",
}
INVALID_KEY = "Invalid API key provided. You can find your API key at https://api.together.xyz/settings/api-keys."
MISSING_KEY = "No API key provided. You can find your API key at https://api.together.xyz/settings/api-keys."


class TogetherSim(ProviderSim):
    name = "together"
    prefix = "/together"
    default_key = "sandbox-together-key"
    finished_cancel_status = 400

    @classmethod
    def new_batch_id(cls) -> str:
        return str(uuid4())

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/batches/{batch_id}/cancel", self.cancel),
            ("GET", "/v1/batches/{batch_id}", self.retrieve),
            ("GET", "/v1/batches", self.list_batches),
        ]

    async def list_batches(self, request: web.Request) -> web.Response:
        key = bearer_token(request)
        if not self.sim.key_ok(self.name, key):
            return self.gateway_error(401, INVALID_KEY if key else MISSING_KEY, "invalid_api_key")
        batches, _ = self.store.page(key, limit=len(self.store))
        return json_response([self.render(batch) for batch in batches], headers=self.response_headers())

    def answer(self, request: web.Request, *, cancel: bool) -> web.Response:
        key = bearer_token(request)
        if not self.sim.key_ok(self.name, key):
            return self.gateway_error(401, INVALID_KEY if key else MISSING_KEY, "invalid_api_key")
        batch_id = request.match_info["batch_id"]
        batch = self.store.get(batch_id, key)
        if batch is None:
            return self.error(404, f"batch job {batch_id} not found")
        if cancel:
            try:
                batch.cancel(time(), immediately=True)  # no interim state on Together
            except NotCancellable:
                return self.error(400, f"cannot cancel batch job {batch_id} with status {STATUS[batch.status]}")
        return json_response(self.render(batch), headers=self.response_headers())

    def render(self, batch: SimBatch) -> dict[str, Any]:
        data, counts = batch.to_dict(), batch.request_counts
        ended = data["completed_at"] or data["failed_at"] or data["expired_at"] or data["cancelled_at"]
        done = counts["completed"] + counts["failed"]
        return {
            "id": batch.id,
            "user_id": "user_sandbox",
            "input_file_id": "file-sandbox-input",
            "file_size_bytes": 1048576,
            "status": STATUS[batch.status],
            "job_deadline": _rfc3339(batch.created_at + BATCH_LIFETIME_S),
            "created_at": _rfc3339(batch.created_at),
            "endpoint": "/v1/chat/completions",
            "progress": round(100.0 * done / counts["total"], 2) if counts["total"] else 0.0,
            "model_id": "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo",
            "output_file_id": None,
            "error_file_id": None,
            "error": None,
            "completed_at": _rfc3339(ended) if ended else None,
        }

    def error(self, status: int, message: str) -> web.Response:
        return json_response({"error": message}, status, self.response_headers())

    def gateway_error(self, status: int, message: str, code: str | None = None) -> web.Response:
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        return json_response(body, status, self.response_headers())

    def status_error(self, status: int) -> web.Response:
        if status == 429:
            return self.gateway_error(429, "You have been rate limited. Please retry later.", "rate_limit_exceeded")
        return self.error(status, reason(status))

    async def not_found_route(self, request: web.Request) -> web.Response:
        return self.error(404, "Not Found")

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": str(uuid4())}


def _rfc3339(unix: int) -> str:
    """RFC 3339 in UTC with microseconds, as Together renders timestamps."""
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
