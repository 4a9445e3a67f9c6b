"""Simulated Anthropic Message Batches API: cancel, retrieve and list.

    POST {prefix}/v1/messages/batches/{id}/cancel   (no body)  -> message_batch
    GET  {prefix}/v1/messages/batches/{id}                     -> message_batch
    GET  {prefix}/v1/messages/batches?after_id=&before_id=&limit=
                                   -> {data, has_more, first_id, last_id}, most recent first

The list is a cursor page: `after_id` = the previous page's `last_id` pages towards older
batches, `before_id` = its `first_id` towards newer ones; `limit` 1-1000, default 20. A limit out
of range, a non-integer one, or both cursors at once is a 400 invalid_request_error (the exact
wording is not pinned down). A message batch has no metadata.

Auth: the key in `x-api-key` (what the API reference documents) or `Authorization: Bearer <key>`
(what the current official SDK sends), and an `anthropic-version` header with any date; without it
the answer is 400 `anthropic-version: header is required`. Every answer carries a `request-id`
header; errors are `{"type": "error", "error": {"type", "message"}, "request_id"}`.

The batch state (OpenAI vocabulary in SimBatch) renders as Anthropic's: validating, in_progress
and finalizing are `in_progress`; cancelling is `canceling` with `cancel_initiated_at`; every
terminal state is `ended` with `ended_at` and a `results_url`. All requests stay in `processing`
until the batch ends; then SimBatch's counts are split into Anthropic's five tallies (see
`message_batch_counts`). A cancelled batch ends after its `cancel_delay_s` with the unfinished
requests moved from `processing` to `canceled`.

What Anthropic answers when cancelling a batch that already ended is not pinned down by any public
source: the simulator refuses it with `AnthropicOptions.ended_cancel_status` (400 by default,
409 is the other plausible answer), type `invalid_request_error`.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from time import time
from typing import Any
from urllib.parse import quote
from weakref import WeakKeyDictionary

from aiohttp import web

from sandbox.core import (
    BATCH_LIFETIME_S,
    TERMINAL,
    Handler,
    NotCancellable,
    ProviderSim,
    SimBatch,
    Simulator,
    bearer_token,
    int_query,
    json_response,
    reason,
)

MISSING_KEY = "x-api-key header is required"
INVALID_KEY = "invalid x-api-key"
INVALID_BEARER = "Invalid bearer token"
MISSING_VERSION = "anthropic-version: header is required"
LIST_DEFAULT_LIMIT = 20
LIST_MAX_LIMIT = 1000

# Anthropic's documented error types per HTTP status, with the message an injected fault answers.
STATUS_ERRORS: dict[int, tuple[str, str]] = {
    400: ("invalid_request_error", "There was an issue with the format or content of your request."),
    401: ("authentication_error", INVALID_KEY),
    403: ("permission_error", "Your API key does not have permission to use the specified resource."),
    404: ("not_found_error", "The requested resource could not be found."),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    500: ("api_error", "Internal server error"),
    529: ("overloaded_error", "Overloaded"),
}

# SimBatch status -> Anthropic processing_status.
PROCESSING_STATUS = {
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "cancelling": "canceling",
    "completed": "ended",
    "failed": "ended",
    "expired": "ended",
    "cancelled": "ended",
}

_BASE58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


@dataclass(slots=True)
class AnthropicOptions:
    """Behaviour no public source pins down, chosen per sandbox (`anthropic_options(sim)`)."""

    # HTTP status of the refusal to cancel a batch that already ended (type invalid_request_error).
    ended_cancel_status: int = 400

    def __post_init__(self) -> None:
        status = self.ended_cancel_status
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 499:
            raise ValueError("ended_cancel_status must be an HTTP 4xx status")


_OPTIONS: WeakKeyDictionary[Simulator, AnthropicOptions] = WeakKeyDictionary()


def anthropic_options(sim: Simulator) -> AnthropicOptions:
    """The Anthropic options of one sandbox (they survive `sim.reset()`)."""
    options = _OPTIONS.get(sim)
    if options is None:
        options = _OPTIONS[sim] = AnthropicOptions()
    return options


def rfc3339(seconds: int | None) -> str | None:
    """Unix seconds as Anthropic writes times: RFC 3339, UTC, microseconds, `Z`."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message_batch_counts(batch: SimBatch) -> dict[str, int]:
    """SimBatch's total/completed/failed as Anthropic's five tallies. Until the batch ends every
    request is `processing`; once it ended, completed -> succeeded, failed -> errored, and the rest
    goes where the batch's end put it (succeeded for a completed batch, errored for a failed one,
    expired, or canceled)."""
    counts = batch.request_counts
    total, completed, failed = counts["total"], counts["completed"], counts["failed"]
    tallies = {"processing": 0, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0}
    if batch.status not in TERMINAL:
        tallies["processing"] = total
        return tallies
    rest = max(total - completed - failed, 0)
    tallies["succeeded"], tallies["errored"] = completed, failed
    bucket = {"completed": "succeeded", "failed": "errored", "expired": "expired", "cancelled": "canceled"}
    tallies[bucket[batch.status]] += rest
    return tallies


def render_message_batch(batch: SimBatch, results_base: str) -> dict[str, Any]:
    """The batch as an Anthropic `message_batch`; `results_base` is the API base for results_url."""
    data = batch.to_dict()
    status = PROCESSING_STATUS[batch.status]
    ended = status == "ended"
    ended_at = data["cancelled_at"] or data["completed_at"] or data["failed_at"] or data["expired_at"]
    return {
        "id": batch.id,
        "type": "message_batch",
        "processing_status": status,
        "request_counts": message_batch_counts(batch),
        "ended_at": rfc3339(ended_at) if ended else None,
        "created_at": rfc3339(batch.created_at),
        "expires_at": rfc3339(batch.created_at + BATCH_LIFETIME_S),
        "archived_at": None,
        "cancel_initiated_at": rfc3339(batch.cancelling_at),
        "results_url": f"{results_base}/v1/messages/batches/{quote(batch.id, safe='')}/results" if ended else None,
    }


def request_id() -> str:
    return "req_011C" + "".join(secrets.choice(_BASE58) for _ in range(20))


class AnthropicSim(ProviderSim):
    name = "anthropic"
    prefix = "/anthropic"
    default_key = "sk-ant-api03-sandbox-anthropic"
    finished_cancel_status = 400

    @classmethod
    def new_batch_id(cls) -> str:
        return f"msgbatch_{uuid.uuid4().hex[:20]}"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/messages/batches/{batch_id}/cancel", self.cancel),
            ("GET", "/v1/messages/batches/{batch_id}", self.retrieve),
            ("GET", "/v1/messages/batches", self.list_batches),
        ]

    async def list_batches(self, request: web.Request) -> web.Response:
        denied = self.check_headers(request)
        if denied is not None:
            return denied
        try:
            limit = int_query(request, "limit")
        except ValueError:
            return self.error(400, "invalid_request_error", "limit: Input should be a valid integer")
        if limit is None:
            limit = LIST_DEFAULT_LIMIT
        if not 1 <= limit <= LIST_MAX_LIMIT:
            bound = "greater than or equal to 1" if limit < 1 else f"less than or equal to {LIST_MAX_LIMIT}"
            return self.error(400, "invalid_request_error", f"limit: Input should be {bound}")
        after_id, before_id = request.query.get("after_id"), request.query.get("before_id")
        if after_id is not None and before_id is not None:
            return self.error(400, "invalid_request_error", "Only one of before_id and after_id may be provided.")
        account = self.account(request)
        cursor_id = after_id if after_id is not None else before_id
        cursor = None if cursor_id is None else self.cursor_of(cursor_id, account)
        batches: list[SimBatch] = []
        has_more = False
        if cursor_id is None or cursor is not None:
            newest_first = before_id is None
            batches, has_more = self.store.page(account, limit=limit, after=cursor, newest_first=newest_first)
            if not newest_first:
                batches.reverse()
        base = f"{request.url.origin()}{self.prefix}"
        data = [render_message_batch(batch, base) for batch in batches]
        body = {
            "data": data,
            "has_more": has_more,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
        }
        return json_response(body, headers=self.response_headers())

    def answer(self, request: web.Request, *, cancel: bool) -> web.Response:
        denied = self.check_headers(request)
        if denied is not None:
            return denied
        batch_id = request.match_info["batch_id"]
        batch = self.store.get(batch_id, self.account(request))
        if batch is None:
            return self.error(404, "not_found_error", f"message_batch_id {batch_id!r} was not found.")
        if cancel:
            try:
                batch.cancel(time())
            except NotCancellable:
                status = anthropic_options(self.sim).ended_cancel_status
                message = f"Message Batch {batch_id} has already ended and can no longer be canceled."
                return self.error(status, "invalid_request_error", message)
        base = f"{request.url.origin()}{self.prefix}"
        return json_response(render_message_batch(batch, base), headers=self.response_headers())

    def account(self, request: web.Request) -> str | None:
        return request.headers.get("x-api-key") or bearer_token(request)

    def check_headers(self, request: web.Request) -> web.Response | None:
        """None when the key (x-api-key or Bearer) is accepted and a version is named, else the
        401 or 400 answer. The key is never echoed."""
        api_key = request.headers.get("x-api-key")
        bearer = None if api_key else bearer_token(request)
        if not api_key and not bearer:
            return self.error(401, "authentication_error", MISSING_KEY)
        if not self.sim.key_ok(self.name, api_key or bearer):
            return self.error(401, "authentication_error", INVALID_KEY if api_key else INVALID_BEARER)
        if not request.headers.get("anthropic-version", "").strip():
            return self.error(400, "invalid_request_error", MISSING_VERSION)
        return None

    def error(self, status: int, error_type: str, message: str) -> web.Response:
        rid = request_id()
        body = {"type": "error", "error": {"type": error_type, "message": message}, "request_id": rid}
        return json_response(body, status, {"request-id": rid})

    def status_error(self, status: int) -> web.Response:
        default = ("api_error" if status >= 500 else "invalid_request_error", reason(status))
        error_type, message = STATUS_ERRORS.get(status, default)
        return self.error(status, error_type, message)

    async def not_found_route(self, request: web.Request) -> web.Response:
        return self.error(404, "not_found_error", "Not Found")

    def response_headers(self) -> dict[str, str]:
        return {"request-id": request_id()}
