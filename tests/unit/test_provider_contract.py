"""Rules every adapter follows, checked over the whole catalog with no network (the same rules over
real gRPC and HTTP are in tests/integration/test_provider_contract.py): how configured extra headers
merge with the gateway's own (issue 12 item 7), which adapters take a caller's direct key (item 6),
which ids are refused, how an error answer without the provider's envelope and an unknown status
are read, and that the sandbox's config block for each provider is one its key schema reads."""

from __future__ import annotations

import asyncio
import logging

import pytest

from sandbox.server import SIMULATORS
from service.domain.errors import InvalidRequest
from service.domain.model import STATUSES
from service.infra.providers.base import RESERVED_HEADERS, UpstreamResponse, merge_headers
from service.infra.providers.catalog import ADAPTERS, KEY_SCHEMAS, KNOWN_PROVIDERS, NO_BATCH_CANCEL, parse_config

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


# --- ids, error answers without an envelope, statuses ----------------------------------------------

# Ids no adapter may accept: each would change the upstream path, query or fragment (or is empty).
UNSAFE_IDS = ["", "a/b", "../x", "..", ".", "a?b", "a#b", "a%2Fb", "a%2e%2e", "a\\b", "a b", "a\x00b", "a\nb"]


@pytest.mark.parametrize("batch_id", UNSAFE_IDS)
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_unsafe_ids_are_refused_before_any_request(name, batch_id):
    with pytest.raises(InvalidRequest) as info:
        adapter(name).parse_id(batch_id)
    assert info.value.param == "batch_id"


@pytest.mark.parametrize(
    ("status", "body", "content_type"),
    [(502, b"<html><body>Bad Gateway</body></html>", "text/html"), (500, b"", "application/json"),
     (503, b"{not json", "application/json"), (404, b"[]", "application/json")],
)  # fmt: skip
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_an_error_without_the_providers_envelope_keeps_its_status_with_a_generic_message(
    name, status, body, content_type
):
    error = adapter(name).parse_error(UpstreamResponse(status, {"Content-Type": content_type}, body))
    assert (error.status_code, error.message, error.provider) == (status, f"{name} answered HTTP {status}", name)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_status_tables_map_to_the_unified_vocabulary_and_unknown_ones_pass_through_once(name, caplog):
    a = adapter(name)
    assert set(a.statuses.values()) <= STATUSES
    with caplog.at_level(logging.WARNING, logger="service.infra.providers.base"):
        assert [a.status("Brand_New_State") for _ in range(3)] == ["brand_new_state"] * 3
    assert sum("brand_new_state" in record.getMessage() for record in caplog.records) == 1


# --- the catalog and the key schemas ---------------------------------------------------------------


def test_the_catalog_lists_each_provider_once_and_config_knows_them_all():
    names = [cls.name for cls in ADAPTERS.values()]
    assert len(names) == len(set(names)) and not set(names) & NO_BATCH_CANCEL
    assert KEY_SCHEMAS.keys() == KNOWN_PROVIDERS


@pytest.mark.parametrize("sim", SIMULATORS, ids=lambda sim: sim.name)
def test_every_simulator_is_a_known_provider_whose_key_schema_reads_its_block(sim):
    block = sim.gateway_config(f"{SANDBOX}{sim.prefix}", sim.default_key)
    key = parse_config({"providers": {sim.name: block}}, env={}).providers[sim.name].keys[0]
    cls = ADAPTERS.get(sim.name)
    if cls is None or cls.key_settings_block is None:
        assert key.settings is None and key.value == sim.default_key
    else:
        assert key.settings is not None and block["keys"][0][cls.key_settings_block]
