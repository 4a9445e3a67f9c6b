"""Simulated Groq batches API: OpenAI's batch API under `/openai/v1`.

    POST {prefix}/openai/v1/batches/{id}/cancel   -> the Batch (status `cancelling`)
    GET  {prefix}/openai/v1/batches/{id}          -> the Batch
    GET  {prefix}/openai/v1/batches               -> OpenAI's list page

Everything but the paths and the error wording is OpenAI's (see sandbox/openai.py), including the
list's `after` / `limit` pagination (the groq SDK's `batches.list()` sends neither, and types the
answer as `{object, data}` only). Groq's error
objects carry no `param`, and a missing or wrong key gets 401 `Invalid API Key` /
`invalid_api_key` without echoing the key.
"""

from __future__ import annotations

import uuid
from secrets import choice

from aiohttp import web

from sandbox.core import Handler, bearer_token, json_response
from sandbox.openai import OpenAISim

_ULID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


class GroqSim(OpenAISim):
    name = "groq"
    prefix = "/groq"
    default_key = "gsk_sandbox_groq_key"

    @classmethod
    def new_batch_id(cls) -> str:
        return f"batch_01{uuid.uuid4().hex[:24]}"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/openai/v1/batches/{batch_id}/cancel", self.cancel),
            ("GET", "/openai/v1/batches/{batch_id}", self.retrieve),
            ("GET", "/openai/v1/batches", self.list_batches),
        ]

    def authenticate(self, request: web.Request) -> web.Response | None:
        if self.sim.key_ok(self.name, bearer_token(request)):
            return None
        return self.error(401, "Invalid API Key", code="invalid_api_key")

    def error(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> web.Response:
        body: dict = {"message": message, "type": error_type}
        if code is not None:
            body["code"] = code
        return json_response({"error": body}, status, self.response_headers())

    async def not_found_route(self, request: web.Request) -> web.Response:
        return self.error(404, "Unknown request URL: please check the URL for typos.", code="unknown_url")

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": "req_01" + "".join(choice(_ULID_ALPHABET) for _ in range(24))}
