"""Simulated Cohere batches API (v2): cancel, retrieve and list.

    POST {prefix}/v2/batches/{id}:cancel   -> `{}`
    GET  {prefix}/v2/batches/{id}          -> `{"batch": Batch}`
    GET  {prefix}/v2/batches?page_size=&page_token=&order_by=
                                           -> `{"batches": [Batch], "next_page_token"}`

The list (cohere SDK's `batches.list`) answers at most 50 batches unless `page_size` says
otherwise, coerces a page size above 1000 to 1000 (both documented), and leaves
`next_page_token` out on the last page. `order_by` is `created_at` (the default) or `updated_at`,
newest first (the direction is not documented); anything else, a negative page size or a token the
simulator did not make is a 400. A Cohere batch has no metadata.

Auth is `Authorization: Bearer KEY`; errors are `{"id": "<uuid>", "message"}` (401 `invalid api
token` / `no api key supplied`, 404 for an unknown batch, 400 for a batch that already finished).
A cancel moves a running batch to BATCH_STATUS_CANCELING, which reads as BATCH_STATUS_CANCELED
once the batch's cancel delay has passed. Timestamps are RFC 3339 with milliseconds; token counts
are int64 strings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from time import time
from typing import Any
from uuid import uuid4

from aiohttp import web

from sandbox.core import (
    Handler,
    NotCancellable,
    ProviderSim,
    SimBatch,
    bearer_token,
    coerced_page_size,
    json_response,
    page_token,
    reason,
    token_query,
)

STATUS = {
    "validating": "BATCH_STATUS_QUEUED",
    "in_progress": "BATCH_STATUS_IN_PROGRESS",
    "finalizing": "BATCH_STATUS_IN_PROGRESS",
    "completed": "BATCH_STATUS_COMPLETED",
    "failed": "BATCH_STATUS_FAILED",
    "expired": "BATCH_STATUS_FAILED",  # Cohere has no expired status
    "cancelling": "BATCH_STATUS_CANCELING",
    "cancelled": "BATCH_STATUS_CANCELED",
}
LIST_DEFAULT_PAGE_SIZE = 50
LIST_MAX_PAGE_SIZE = 1000
STATUS_MESSAGES = {429: "You are using a Trial key, which is limited to 10 API calls / minute."}


class CohereSim(ProviderSim):
    name = "cohere"
    prefix = "/cohere"
    default_key = "sandbox-cohere-key"
    finished_cancel_status = 400

    @classmethod
    def new_batch_id(cls) -> str:
        return str(uuid4())

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v2/batches/{batch_id:[^/]+}:cancel", self.cancel),
            ("GET", "/v2/batches/{batch_id}", self.retrieve),
            ("GET", "/v2/batches", self.list_batches),
        ]

    async def list_batches(self, request: web.Request) -> web.Response:
        key = bearer_token(request)
        if not self.sim.key_ok(self.name, key):
            return self.error(401, "invalid api token" if key else "no api key supplied")
        try:
            size = coerced_page_size(request, "page_size", LIST_DEFAULT_PAGE_SIZE, LIST_MAX_PAGE_SIZE)
            cursor = token_query(request, "page_token")
        except ValueError as exc:
            return self.error(400, str(exc))
        order = request.query.get("order_by") or "created_at"
        if order not in ("created_at", "updated_at"):
            return self.error(400, f"invalid order_by {order!r}: use created_at or updated_at")
        if order == "created_at":
            batches, more = self.store.page(key, limit=size, after=cursor)
            next_token = self.store.next_token(batches, more)
        else:  # by last update: a sort of every batch, the token an offset
            everything, _ = self.store.page(key, limit=len(self.store))
            everything.sort(key=updated_at, reverse=True)
            offset = cursor[1] if cursor else 0
            batches, more = everything[offset : offset + size], offset + size < len(everything)
            next_token = page_token((0, offset + size)) if more else None
        body: dict[str, Any] = {"batches": [self.render(batch) for batch in batches]}
        if next_token:
            body["next_page_token"] = next_token
        return json_response(body, headers=self.response_headers())

    def answer(self, request: web.Request, *, cancel: bool) -> web.Response:
        key = bearer_token(request)
        if not self.sim.key_ok(self.name, key):
            return self.error(401, "invalid api token" if key else "no api key supplied")
        batch_id = request.match_info["batch_id"]
        batch = self.store.get(batch_id, key)
        if batch is None:
            return self.error(404, f"batch {batch_id} not found")
        if not cancel:
            return json_response({"batch": self.render(batch)}, headers=self.response_headers())
        try:
            batch.cancel(time())
        except NotCancellable:
            return self.error(400, f"batch {batch_id} is {STATUS[batch.status]} and cannot be canceled")
        return json_response({}, headers=self.response_headers())

    def render(self, batch: SimBatch) -> dict[str, Any]:
        counts = batch.request_counts
        return {
            "id": batch.id,
            "name": "sandbox-batch",
            "creator_id": "sandbox-user",
            "org_id": "sandbox-org",
            "status": STATUS[batch.status],
            "created_at": _rfc3339(batch.created_at),
            "updated_at": _rfc3339(updated_at(batch)),
            "input_dataset_id": "sandbox-dataset-input",
            "output_dataset_id": None,
            "input_tokens": str(counts["total"] * 100),
            "output_tokens": str(counts["completed"] * 50),
            "model": "command-r-08-2024",
            "num_records": counts["total"],
            "num_successful_records": counts["completed"],
            "num_failed_records": counts["failed"],
            "status_reason": "",
        }

    def error(self, status: int, message: str) -> web.Response:
        return json_response({"id": str(uuid4()), "message": message}, status, self.response_headers())

    def status_error(self, status: int) -> web.Response:
        return self.error(status, STATUS_MESSAGES.get(status, reason(status).lower()))

    async def not_found_route(self, request: web.Request) -> web.Response:
        return self.error(404, f"{request.path[len(self.prefix) :]} not found")

    def response_headers(self) -> dict[str, str]:
        return {"x-trace-id": uuid4().hex}


def updated_at(batch: SimBatch) -> int:
    return max(t for t in (batch.created_at, batch.in_progress_at, batch.cancelling_at, batch.cancelled_at) if t)


def _rfc3339(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
