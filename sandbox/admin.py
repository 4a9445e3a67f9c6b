"""The sandbox's own HTTP API under `/_sim/`, for tests and demos driving a sandbox in another process.

    POST   /_sim/{provider}/batches        {"id", "status"?, "request_counts"?, "cancel_delay_s"?,
                                             "created_at"?, ...SimBatch fields} -> 201 batch
    GET    /_sim/{provider}/batches/{id}   -> current state (OpenAI batch shape), 404 if unknown
    POST   /_sim/{provider}/faults         a fault object or a list of them -> {"pending": n}
    GET    /_sim/calls[?provider=P]        -> recorded provider calls, oldest first
    DELETE /_sim/calls                     -> 204
    POST   /_sim/reset                     -> 204 (forgets batches, faults and calls)

Errors are `{"error": "<message>"}` with 400 (bad body) or 404 (unknown provider or batch).
Admin calls are not recorded and never consume faults.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from sandbox.core import BatchStore, Simulator, json_response


class AdminAPI:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def route_table(self) -> list[web.RouteDef]:
        return [
            web.post("/_sim/{provider}/batches", self.seed),
            web.get("/_sim/{provider}/batches/{batch_id}", self.get_batch),
            web.post("/_sim/{provider}/faults", self.add_faults),
            web.get("/_sim/calls", self.list_calls),
            web.delete("/_sim/calls", self.clear_calls),
            web.post("/_sim/reset", self.reset),
        ]

    async def seed(self, request: web.Request) -> web.Response:
        store = self._store(request)
        fields = await _json_body(request)
        if not isinstance(fields, dict):
            raise _bad_request("the body must be a JSON object")
        try:
            batch = store.seed(fields.pop("id", None), **fields)
        except (TypeError, ValueError) as exc:
            raise _bad_request(str(exc)) from None
        return json_response(batch.to_dict(), 201)

    async def get_batch(self, request: web.Request) -> web.Response:
        batch = self._store(request).peek(request.match_info["batch_id"])
        if batch is None:
            raise _not_found(f"no batch {request.match_info['batch_id']!r}")
        return json_response(batch.to_dict())

    async def add_faults(self, request: web.Request) -> web.Response:
        provider = self._store(request).provider
        faults = await _json_body(request)
        if not isinstance(faults, (dict, list)):
            raise _bad_request("the body must be a fault object or a list of them")
        try:
            pending = self.sim.add_fault(provider, faults)
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        return json_response({"pending": pending})

    async def list_calls(self, request: web.Request) -> web.Response:
        return json_response(self.sim.calls(request.query.get("provider")))

    async def clear_calls(self, request: web.Request) -> web.Response:
        self.sim.clear_calls()
        return web.Response(status=204)

    async def reset(self, request: web.Request) -> web.Response:
        self.sim.reset()
        return web.Response(status=204)

    def _store(self, request: web.Request) -> BatchStore:
        try:
            return self.sim.store(request.match_info["provider"])
        except KeyError as exc:
            raise _not_found(exc.args[0]) from None


async def _json_body(request: web.Request) -> Any:
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError as exc:
        raise _bad_request(f"the body is not JSON: {exc}") from None


def _bad_request(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=orjson.dumps({"error": message}).decode(), content_type="application/json")


def _not_found(message: str) -> web.HTTPNotFound:
    return web.HTTPNotFound(text=orjson.dumps({"error": message}).decode(), content_type="application/json")
