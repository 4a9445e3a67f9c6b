"""Simulated xAI batches API: cancel, retrieve and list.

    POST {prefix}/v1/batches/{batch_id}:cancel   -> the Batch
    GET  {prefix}/v1/batches/{batch_id}          -> the Batch
    GET  {prefix}/v1/batches?limit=&pagination_token=   -> {"batches": [Batch], "pagination_token"}

The list is xai-sdk's ListBatches (`limit`, `pagination_token`) over REST, newest first; the last
page has no `pagination_token`. The server's default and largest `limit` are not documented: the
simulator answers 100 by default and at most 1000; a negative limit or a token it did not make is
400 INVALID_ARGUMENT. A Batch has no metadata.

A Batch has no status field, only request tallies (`state`) and a `cancel_time`:

    {"batch_id", "name", "create_time", "expire_time", "create_api_key_id", "cancel_time",
     "cancel_by_xai_message", "state": {"num_requests", "num_pending", "num_success", "num_error",
     "num_cancelled"}, "cost_breakdown", "input_file_id"}

The simulator's requests are `total` = num_requests, `completed` = num_success, `failed` =
num_error; the rest is pending while the batch runs, cancelled once a cancel took effect, and
counted as succeeded (completed batch) or errored (failed or expired batch) otherwise. A cancel sets
`cancel_time`; the pending requests move to `num_cancelled` once the batch's cancel delay has
passed (at once with `cancel_immediately`).

Errors are `{"code": "<gRPC status description>", "error": "<message>"}`: a wrong key is a 400
INVALID_ARGUMENT ("Incorrect API key provided: ab***yz. ..."), a missing one a 401, an unknown
batch a 404. Whether a finished batch can be cancelled is not documented: by default it is refused
(400 FAILED_PRECONDITION); with `reject_finished_cancel` off the batch is answered unchanged.
"""

from __future__ import annotations

from datetime import UTC, datetime
from time import time
from typing import Any, ClassVar
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
    reason,
    token_query,
)

# gRPC status descriptions as xAI's API puts them in `code`.
INVALID_ARGUMENT = "Client specified an invalid argument"
UNAUTHENTICATED = "The request does not have valid authentication credentials"
NOT_FOUND = "Some requested entity was not found"
FAILED_PRECONDITION = "The system is not in a state required for the operation's execution"
DESCRIPTIONS = {
    400: INVALID_ARGUMENT,
    401: UNAUTHENTICATED,
    403: "The caller does not have permission to execute the specified operation",
    404: NOT_FOUND,
    429: "Some resource has been exhausted",
    500: "Internal error",
    503: "The service is currently unavailable",
    504: "The deadline expired before the operation could complete",
}
LIST_DEFAULT_LIMIT = 100
LIST_MAX_LIMIT = 1000
INVALID_KEY = "Incorrect API key provided: {masked}. You can obtain an API key from https://console.x.ai."


class XAISim(ProviderSim):
    name = "xai"
    prefix = "/xai"
    default_key = "xai-sandbox-key"

    @classmethod
    def new_batch_id(cls) -> str:
        return f"batch_{uuid4()}"

    # Unconfirmed upstream behaviour, switchable per test (e.g. monkeypatch.setattr on the class).
    cancel_immediately: ClassVar[bool] = False
    reject_finished_cancel: ClassVar[bool] = True

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/batches/{batch_id:[^/]+}:cancel", self.cancel),
            ("GET", "/v1/batches/{batch_id}", self.retrieve),
            ("GET", "/v1/batches", self.list_batches),
        ]

    async def list_batches(self, request: web.Request) -> web.Response:
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        try:
            limit = coerced_page_size(request, "limit", LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT)
            cursor = token_query(request, "pagination_token")
        except ValueError as exc:
            return self.error(400, str(exc))
        batches, more = self.store.page(bearer_token(request), limit=limit, after=cursor)
        body: dict[str, Any] = {"batches": [self.render(batch) for batch in batches]}
        token = self.store.next_token(batches, more)
        if token:
            body["pagination_token"] = token
        return json_response(body, headers=self.response_headers())

    def authenticate(self, request: web.Request) -> web.Response | None:
        key = bearer_token(request)
        if key is None:
            return self.error(401, "Missing bearer or basic authentication in header")
        if not self.sim.key_ok(self.name, key):
            return self.error(400, INVALID_KEY.format(masked=f"{key[:2]}***{key[-2:]}"))
        return None

    def answer(self, request: web.Request, *, cancel: bool) -> web.Response:
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        batch_id = request.match_info["batch_id"]
        batch = self.store.get(batch_id, bearer_token(request))
        if batch is None:
            return self.error(404, f"Batch {batch_id} not found")
        if cancel:
            try:
                batch.cancel(time(), immediately=self.cancel_immediately)
            except NotCancellable:
                if self.reject_finished_cancel:
                    return self.error(400, f"Batch {batch_id} has already finished", code=FAILED_PRECONDITION)
        return json_response(self.render(batch), headers=self.response_headers())

    def render(self, batch: SimBatch) -> dict[str, Any]:
        counts, status = batch.request_counts, batch.status
        total, success, error = counts["total"], counts["completed"], counts["failed"]
        rest = max(0, total - success - error)
        pending = cancelled = 0
        if status == "cancelled":
            cancelled = rest
        elif status == "completed":
            success += rest
        elif status in ("failed", "expired"):
            error += rest
        else:
            pending = rest
        return {
            "batch_id": batch.id,
            "name": "sandbox batch",
            "create_time": _rfc3339(batch.created_at),
            "expire_time": _rfc3339(batch.to_dict()["expires_at"]),
            "create_api_key_id": "sandbox-api-key-id",
            "cancel_time": _rfc3339(batch.cancelling_at),
            "cancel_by_xai_message": None,
            "state": {
                "num_requests": total,
                "num_pending": pending,
                "num_success": success,
                "num_error": error,
                "num_cancelled": cancelled,
            },
            "cost_breakdown": {"total_cost_usd_ticks": 0, "endpoint_costs": []},
            "input_file_id": None,
        }

    def error(self, status: int, message: str, *, code: str | None = None) -> web.Response:
        body = {"code": code or DESCRIPTIONS.get(status, reason(status)), "error": message}
        return json_response(body, status, self.response_headers())

    def status_error(self, status: int) -> web.Response:
        return self.error(status, reason(status))

    async def not_found_route(self, request: web.Request) -> web.Response:
        return self.error(404, f"No handler found for {request.method} {request.path[len(self.prefix) :]}")

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": str(uuid4())}


def _rfc3339(unix: int | None) -> str | None:
    return None if not unix else datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
