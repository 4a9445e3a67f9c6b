"""Simulated OpenAI and Azure OpenAI batch APIs: cancel, retrieve and list.

Both answer a cancel with the full Batch object. The list (`GET .../batches?after=&limit=`) is
newest first, `limit` 1-100 (default 20), a cursor page `{object: list, data, first_id, last_id,
has_more}` whose next page is `after=<last_id>`. As live OpenAI does, `limit=0` answers an empty
page, and a limit below 0 or above 100 is a 400 `integer_below_min_value` /
`integer_above_max_value` with `param: limit`. An `after` id this key cannot see answers an empty
page (what OpenAI answers is not pinned down). Batches carry their `metadata`.

Azure differs in its auth header (`api-key`), its `api-version` query parameter, its error
envelope and, with the simulator's `azure_quirks` option, in a preview build's batch shape:
capitalised statuses, ISO 8601 timestamps and null request counts.
"""

from __future__ import annotations

from datetime import UTC, datetime
from secrets import token_hex
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
    int_query,
    json_response,
    mask_key,
    reason,
)

LIST_DEFAULT_LIMIT = 20
LIST_MAX_LIMIT = 100

OPENAI_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY), or as the password field (with blank username) if "
    "you're accessing the API from your browser and are prompted for a username. You can obtain an API key "
    "from https://platform.openai.com/account/api-keys."
)
OPENAI_INVALID_KEY = (
    "Incorrect API key provided: {masked}. You can find your API key at https://platform.openai.com/account/api-keys."
)
# Injected status -> (message, type, code) of OpenAI's answer.
OPENAI_STATUS_ERRORS: dict[int, tuple[str, str, str | None]] = {
    429: (
        "Rate limit reached for requests on batches. Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: ("The server had an error while processing your request. Sorry about that!", "server_error", None),
    503: ("The server is overloaded or not ready yet.", "server_error", None),
}

AZURE_MISSING_KEY = (
    "Access denied due to missing subscription key. Make sure to include subscription key when making "
    "requests to an API."
)
AZURE_INVALID_KEY = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key "
    "for an active subscription and use a correct regional API endpoint for your resource."
)
AZURE_RATE_LIMIT = (
    "Requests to the Batches Operation under Azure OpenAI API have exceeded call rate limit of your current "
    "OpenAI S0 pricing tier. Please retry after the number of seconds in the Retry-After header."
)


class OpenAISim(ProviderSim):
    """OpenAI: `POST {prefix}/v1/batches/{id}/cancel`, `GET {prefix}/v1/batches/{id}` and
    `GET {prefix}/v1/batches` with `Authorization: Bearer <key>`."""

    name = "openai"
    prefix = "/openai"
    default_key = "sk-sandbox-openai"

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/v1/batches/{batch_id}/cancel", self.cancel),
            ("GET", "/v1/batches/{batch_id}", self.retrieve),
            ("GET", "/v1/batches", self.list_batches),
        ]

    async def list_batches(self, request: web.Request) -> web.Response:
        """One cursor page of the batches the key sees, newest first."""
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        try:
            limit = int_query(request, "limit")
        except ValueError:
            text = request.query["limit"]
            message = f"Invalid 'limit': expected an integer, but got {text!r} instead."
            return self.error(400, message, param="limit", code="invalid_type")
        if limit is None:
            limit = LIST_DEFAULT_LIMIT
        if limit < 0:
            message = f"Invalid 'limit': integer below minimum value. Expected a value >= 0, but got {limit} instead."
            return self.error(400, message, param="limit", code="integer_below_min_value")
        if limit > LIST_MAX_LIMIT:
            message = (
                "Invalid 'limit': integer above maximum value. "
                f"Expected a value <= {LIST_MAX_LIMIT}, but got {limit} instead."
            )
            return self.error(400, message, param="limit", code="integer_above_max_value")
        account = self.account(request)
        after = request.query.get("after")
        cursor = None if after is None else self.cursor_of(after, account)
        batches: list[SimBatch] = []
        has_more = False
        if after is None or cursor is not None:
            batches, has_more = self.store.page(account, limit=limit, after=cursor)
        data = [self.render(batch) for batch in batches]
        body = {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": has_more,
        }
        return json_response(body, headers=self.response_headers())

    def answer(self, request: web.Request, *, cancel: bool) -> web.Response:
        """Authenticates, finds the batch, cancels it when asked and renders it."""
        denied = self.authenticate(request)
        if denied is not None:
            return denied
        batch_id = request.match_info["batch_id"]
        batch = self.store.get(batch_id, self.account(request))
        if batch is None:
            return self.error(404, f"No batch found with id '{batch_id}'.")
        if cancel:
            try:
                batch.cancel(time())
            except NotCancellable:
                return self.error(409, f"Cannot cancel a batch with status '{batch.status}'.")
        return json_response(self.render(batch), headers=self.response_headers())

    def authenticate(self, request: web.Request) -> web.Response | None:
        """None for an accepted key, else the 401 answer (which never echoes the whole key)."""
        key = bearer_token(request)
        if self.sim.key_ok(self.name, key):
            return None
        if key is None:
            return self.error(401, OPENAI_MISSING_KEY)
        return self.error(401, OPENAI_INVALID_KEY.format(masked=mask_key(key)), code="invalid_api_key")

    def render(self, batch: SimBatch) -> dict[str, Any]:
        return batch.to_dict()

    def error(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> web.Response:
        body = {"error": {"message": message, "type": error_type, "param": param, "code": code}}
        return json_response(body, status, self.response_headers())

    def status_error(self, status: int) -> web.Response:
        default = (reason(status), "server_error" if status >= 500 else "invalid_request_error", None)
        message, error_type, code = OPENAI_STATUS_ERRORS.get(status, default)
        return self.error(status, message, error_type=error_type, code=code)

    async def not_found_route(self, request: web.Request) -> web.Response:
        return self.error(404, f"Invalid URL ({request.method} {request.path[len(self.prefix) :]})")

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": f"req_{token_hex(16)}"}


class AzureSim(OpenAISim):
    """Azure OpenAI: `{prefix}/openai/batches/{id}[/cancel]?api-version=V` and the v1 style
    `{prefix}/openai/v1/batches/{id}[/cancel]` (no api-version), with `api-key: K` or
    `Authorization: Bearer <token>`. Errors from Azure's API gateway (auth, unknown route, missing
    api-version) carry only code and message; the batch API's own errors use the full envelope."""

    name = "azure"
    prefix = "/azure"
    default_key = "sandbox-azure-key"

    @classmethod
    def gateway_config(cls, base_url: str, key: str) -> dict[str, Any]:
        azure = {"endpoint": base_url, "api_version": "2024-10-21"}
        return {"keys": [{"name": "sandbox", "value": key, "use_for_batch_api": True, "azure_key_config": azure}]}

    def routes(self) -> list[tuple[str, str, Handler]]:
        return [
            ("POST", "/openai/batches/{batch_id}/cancel", self._versioned(self.cancel)),
            ("GET", "/openai/batches/{batch_id}", self._versioned(self.retrieve)),
            ("GET", "/openai/batches", self._versioned(self.list_batches)),
            ("POST", "/openai/v1/batches/{batch_id}/cancel", self.cancel),
            ("GET", "/openai/v1/batches/{batch_id}", self.retrieve),
            ("GET", "/openai/v1/batches", self.list_batches),
        ]

    def _versioned(self, handler: Handler) -> Handler:
        async def require_api_version(request: web.Request) -> web.StreamResponse:
            if not request.query.get("api-version"):
                return await self.not_found_route(request)
            return await handler(request)

        return require_api_version

    def account(self, request: web.Request) -> str | None:
        return request.headers.get("api-key") or bearer_token(request)

    def authenticate(self, request: web.Request) -> web.Response | None:
        key = self.account(request)
        if self.sim.key_ok(self.name, key):
            return None
        return self.gateway_error(401, AZURE_INVALID_KEY if key else AZURE_MISSING_KEY)

    def render(self, batch: SimBatch) -> dict[str, Any]:
        data = batch.to_dict()
        if self.sim.azure_quirks:
            data["status"] = data["status"].capitalize()
            for name, value in data.items():
                if name.endswith("_at") and value is not None:
                    data[name] = datetime.fromtimestamp(value, UTC).isoformat()
            data["request_counts"] = None
        return data

    def error(
        self,
        status: int,
        message: str,
        *,
        error_type: str | None = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> web.Response:
        body = {
            "error": {
                "code": code or str(status),
                "message": message,
                "param": param,
                "type": error_type,
                "inner_error": None,
            }
        }
        return json_response(body, status, self.response_headers())

    def gateway_error(self, status: int, message: str) -> web.Response:
        return json_response({"error": {"code": str(status), "message": message}}, status, self.response_headers())

    def status_error(self, status: int) -> web.Response:
        if status == 429:
            return self.error(429, AZURE_RATE_LIMIT, error_type=None)
        return super().status_error(status)

    async def not_found_route(self, request: web.Request) -> web.Response:
        return self.gateway_error(404, "Resource not found")

    def response_headers(self) -> dict[str, str]:
        return {"x-request-id": str(uuid4()), "apim-request-id": str(uuid4())}
