"""Rules every adapter follows, checked over the whole catalog: how configured extra headers merge
with the gateway's own (issue 12 item 7), and which adapters take a caller's direct key (item 6)."""

from __future__ import annotations

import asyncio

import pytest

from sandbox.server import SIMULATORS
from service.providers.catalog import parse_config
from service.providers.base import RESERVED_HEADERS, merge_headers
from service.providers.catalog import ADAPTERS

SANDBOX = "http://127.0.0.1:9"
EVIL = "evil-extra-credential"
EXTRA = {
    "authorization": f"Bearer {EVIL}", "X-API-KEY": EVIL, "Api-Key": EVIL, "x-goog-api-key": EVIL,
    "COOKIE": f"session={EVIL}", "Host": "evil.example", "X-Amz-Security-Token": EVIL, "x-team": "kept",
}  # fmt: skip


def adapter(name: str, extra: dict | None = None):
    (sim,) = [sim for sim in SIMULATORS if sim.name == name]
    block = sim.gateway_config(f"{SANDBOX}{sim.prefix}", sim.default_key)
    block.setdefault("network_config", {})["extra_headers"] = extra or {}
    config = parse_config({"providers": {name: block}}, env={})
    return ADAPTERS[name](config.providers[name])


def requests_of(a) -> list:
    key = a.config.batch_keys[0]
    ref = a.parse_id("batch1")
    made = [a.cancel_request(key, ref), a.status_request(key, ref)]
    made = [r for r in made if r is not None]
    if a.name == "bedrock":  # signing is local; Vertex's prepare would mint a token over HTTP
        made = [asyncio.run(a.prepare(key, r)) for r in made]
    return made


def test_merge_is_case_insensitive_and_later_layers_win():
    merged = merge_headers({"Authorization": "a", "X-A": "1"}, {"authorization": "b"}, {"x-a": "2", "X-B": "3"})
    assert merged == {"authorization": "b", "x-a": "2", "X-B": "3"}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_extra_headers_never_carry_a_credential_and_the_gateways_wins(name):
    for request in requests_of(adapter(name, EXTRA)):
        lowered = [header.lower() for header in request.headers]
        assert len(lowered) == len(set(lowered)), f"a header sent twice: {request.headers}"
        assert not any(EVIL in value or "evil.example" in value for value in request.headers.values())
        assert request.headers.get("x-team") == "kept"
        assert not set(lowered) & {"cookie", "host"}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_every_reserved_name_is_dropped_in_any_case(name):
    a = adapter(name, {reserved.upper(): EVIL for reserved in RESERVED_HEADERS})
    assert a.extra_headers == {}


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_direct_keys_are_taken_exactly_where_the_key_value_is_the_credential(name):
    """A caller's direct key replaces `key.value`; an adapter whose requests do not carry that value
    (SigV4 signing, minted tokens) must refuse direct keys instead of using the gateway's own."""
    a = adapter(name)
    value = a.config.batch_keys[0].value
    carried = bool(value) and any(value in v for r in requests_of(a) for v in r.headers.values())
    assert a.accepts_direct_keys is carried
    assert ADAPTERS["bedrock"].accepts_direct_keys is False and ADAPTERS["vertex"].accepts_direct_keys is False
