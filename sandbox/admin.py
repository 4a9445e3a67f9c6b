"""The sandbox's own HTTP API under `/_sim/`, for tests and demos driving a sandbox in another process.

    POST   /_sim/{provider}/batches        {"id", "status"?, "request_counts"?, "cancel_delay_s"?,
                                             "created_at"?, "metadata"?, "owner"?, ...SimBatch fields}
                                           -> 201 batch
    POST   /_sim/{provider}/seed           many batches at once -> 201 {"created": n, "ids": [...]}:
                                             {"batches": [{SimBatch fields with "id"}, ...]}, or a
                                             generated mix {"count", "statuses"? (list or weights),
                                             "created_after"?, "created_before"?, "metadata"? (list
                                             of objects or null), "owners"? (list of keys or null),
                                             "request_counts"?, "cancel_delay_s"?, "random_seed"?}
    GET    /_sim/{provider}/batches/{id}   -> current state (OpenAI batch shape), 404 if unknown
    POST   /_sim/{provider}/faults         a fault object or a list of them -> {"pending": n}
    PUT    /_sim/{provider}/cancel_rate    {"per_second": n | null} -> {"per_second": n | null}:
                                             beyond n cancels in a second, 429 with Retry-After
    GET    /_sim/{provider}/cancel_rate    -> {"per_second": n | null}
    GET    /_sim/calls[?provider=P]        -> recorded provider calls, oldest first
    DELETE /_sim/calls                     -> 204
    POST   /_sim/reset                     -> 204 (forgets batches, faults and calls)

An `owner` must be one of the provider's keys: only that key then lists, reads and cancels the
batch (another key gets the provider's 404); a batch without owner is every key's.

Errors are `{"error": "<message>"}` with 400 (bad body) or 404 (unknown provider or batch).
Admin calls are not recorded and never consume faults.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from sandbox.core import BatchStore, Simulator, json_response
from sandbox.seeding import generate

_GENERATE_FIELDS = frozenset(
    {"count", "statuses", "created_after", "created_before", "metadata", "owners", "random_seed",
     "request_counts", "cancel_delay_s"}
)  # fmt: skip


class AdminAPI:
    def __init__(self, sim: Simulator) -> None:
        self.sim = sim

    def route_table(self) -> list[web.RouteDef]:
        return [
            web.post("/_sim/{provider}/batches", self.seed),
            web.post("/_sim/{provider}/seed", self.seed_many),
            web.get("/_sim/{provider}/batches/{batch_id}", self.get_batch),
            web.post("/_sim/{provider}/faults", self.add_faults),
            web.put("/_sim/{provider}/cancel_rate", self.set_cancel_rate),
            web.get("/_sim/{provider}/cancel_rate", self.get_cancel_rate),
            web.get("/_sim/calls", self.list_calls),
            web.delete("/_sim/calls", self.clear_calls),
            web.post("/_sim/reset", self.reset),
        ]

    async def seed(self, request: web.Request) -> web.Response:
        store = self._store(request)
        fields = await _json_body(request)
        if not isinstance(fields, dict):
            raise _bad_request("the body must be a JSON object")
        self._check_owners(store, [fields.get("owner")])
        try:
            batch = store.seed(fields.pop("id", None), **fields)
        except (TypeError, ValueError) as exc:
            raise _bad_request(str(exc)) from None
        return json_response(batch.to_dict(), 201)

    async def seed_many(self, request: web.Request) -> web.Response:
        store = self._store(request)
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise _bad_request("the body must be a JSON object")
        try:
            if "batches" in body:
                if set(body) != {"batches"} or not isinstance(body["batches"], list):
                    raise ValueError('"batches" must be a list of batch objects, alone in the body')
                if not all(isinstance(item, dict) for item in body["batches"]):
                    raise ValueError("each batch must be a JSON object")
                batches = body["batches"]
            else:
                unknown = sorted(set(body) - _GENERATE_FIELDS)
                if unknown:
                    raise ValueError(f"unknown fields {unknown}")
                batches = generate(store.new_id, **body)
            self._check_owners(store, [batch.get("owner") for batch in batches])
            created = store.seed_many(batches)
        except (TypeError, ValueError) as exc:
            raise _bad_request(str(exc)) from None
        return json_response({"created": len(created), "ids": [batch.id for batch in created]}, 201)

    def _check_owners(self, store: BatchStore, owners: list[object]) -> None:
        keys = self.sim.keys.get(store.provider, frozenset())
        for owner in owners:
            if owner is not None and (not isinstance(owner, str) or owner not in keys):
                raise _bad_request(f"owner must be one of the {store.provider} keys the sandbox accepts")

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

    async def set_cancel_rate(self, request: web.Request) -> web.Response:
        provider = self._store(request).provider
        body = await _json_body(request)
        if not isinstance(body, dict) or set(body) != {"per_second"}:
            raise _bad_request('the body must be {"per_second": n} or {"per_second": null}')
        try:
            self.sim.set_cancel_rate(provider, body["per_second"])
        except ValueError as exc:
            raise _bad_request(str(exc)) from None
        return json_response({"per_second": self.sim.cancel_rate(provider)})

    async def get_cancel_rate(self, request: web.Request) -> web.Response:
        return json_response({"per_second": self.sim.cancel_rate(self._store(request).provider)})

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
