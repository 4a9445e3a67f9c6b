"""Simulated Mistral batch jobs API: cancel, retrieve and list.

    POST {prefix}/v1/batch/jobs/{job_id}/cancel   -> the BatchJob
    GET  {prefix}/v1/batch/jobs/{job_id}          -> the BatchJob
    GET  {prefix}/v1/batch/jobs?page=&page_size=&status=&created_after=&metadata=&order_by=
                                                  -> {object: list, data: [BatchJob], total}

The list (mistralai SDK's `batch.jobs.list`) numbers pages from 0, `page_size` defaults to 100,
`total` counts every match; `status` repeats (form-exploded) and each must be a BatchJobStatus;
`created_after` (ISO 8601 or unix seconds) keeps jobs created at or after it; `model` and
`agent_id` match exactly; `order_by` is `-created` (default, newest first) or `created`. The SDK
sends `metadata` form-exploded (each pair as its own parameter), which a server cannot tell from
other parameters; the simulator takes `metadata` as a JSON object whose pairs must all equal the
job's. A value that does not validate is FastAPI's 422 `{"detail": [...]}`. Unlike the cursor
lists, a page costs O(all jobs): offsets and `total` need every match.

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

import orjson
from aiohttp import web

from sandbox.bedrock import parse_iso8601
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
STATUSES = tuple(dict.fromkeys(STATUS.values()))
LIST_DEFAULT_PAGE_SIZE = 100
MODEL = "mistral-small-latest"


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
            ("GET", "/v1/batch/jobs", self.list_jobs),
        ]

    async def list_jobs(self, request: web.Request) -> web.Response:
        if not self.sim.key_ok(self.name, bearer_token(request)):
            return self.gateway_error(401)
        query, problems = request.query, []
        page = _query_int(query, "page", 0, 0, problems)
        page_size = _query_int(query, "page_size", LIST_DEFAULT_PAGE_SIZE, 1, problems)
        statuses = query.getall("status", [])
        for i, status in enumerate(statuses):
            if status not in STATUSES:
                expected = ", ".join(f"'{name}'" for name in STATUSES)
                problems.append(_problem("enum", ["query", "status", i], f"Input should be {expected}", status))
        created_after = None
        if "created_after" in query:
            created_after = parse_iso8601(query["created_after"])
            if created_after is None:
                message, text = "Input should be a valid datetime or date", query["created_after"]
                problems.append(_problem("datetime_from_date_parsing", ["query", "created_after"], message, text))
        metadata: Any = None
        if "metadata" in query:
            try:
                metadata = orjson.loads(query["metadata"])
            except orjson.JSONDecodeError:
                metadata = []
            if not isinstance(metadata, dict):
                problems.append(
                    _problem("json_invalid", ["query", "metadata"], "JSON object expected", query["metadata"])
                )
        order = query.get("order_by", "-created")
        if order not in ("created", "-created"):
            problems.append(_problem("enum", ["query", "order_by"], "Input should be 'created' or '-created'", order))
        if problems:
            return json_response({"detail": problems}, 422, self.response_headers())
        model, agent_id = query.get("model"), query.get("agent_id")

        def matches(batch: SimBatch) -> bool:
            if statuses and STATUS[batch.status] not in statuses:
                return False
            if created_after is not None and batch.created_at < created_after:
                return False
            if (model is not None and model != MODEL) or agent_id is not None:
                return False
            return metadata is None or all((batch.metadata or {}).get(k) == v for k, v in metadata.items())

        everything, _ = self.store.page(
            bearer_token(request), limit=len(self.store), newest_first=order == "-created", where=matches
        )
        data = [self.render(batch) for batch in everything[page * page_size : (page + 1) * page_size]]
        return json_response(
            {"object": "list", "data": data, "total": len(everything)}, headers=self.response_headers()
        )

    def answer(self, request: web.Request, *, cancel: bool) -> web.Response:
        if not self.sim.key_ok(self.name, bearer_token(request)):
            return self.gateway_error(401)
        job_id = request.match_info["job_id"]
        if self.validate_uuid and not _is_uuid(job_id):
            return self.uuid_error(job_id)
        batch = self.store.get(job_id, bearer_token(request))
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
            "metadata": None if batch.metadata is None else dict(batch.metadata),
            "endpoint": "/v1/chat/completions",
            "model": MODEL,
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


def _problem(kind: str, loc: list[Any], message: str, value: Any) -> dict[str, Any]:
    """One FastAPI (pydantic) validation problem."""
    return {"type": kind, "loc": loc, "msg": message, "input": value}


def _query_int(query: Any, name: str, default: int, lowest: int, problems: list[dict[str, Any]]) -> int:
    text = query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        message = "Input should be a valid integer, unable to parse string as an integer"
        problems.append(_problem("int_parsing", ["query", name], message, text))
        return default
    if value < lowest:
        message = f"Input should be greater than or equal to {lowest}"
        problems.append(_problem("greater_than_equal", ["query", name], message, text))
    return value


def _is_uuid(value: str) -> bool:
    try:
        UUID(value)
    except ValueError:
        return False
    return True
