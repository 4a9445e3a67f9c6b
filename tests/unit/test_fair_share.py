"""Fair share: what one caller may hold (service.infra.concurrency), who a caller is
(service.edge.callers, Authenticator.caller_key), `client.limits` in the config, and a running
call's check of its caller against the current config (CallerCheck). Time is a number the tests move."""

from __future__ import annotations

import base64
import ipaddress
import logging

import pytest
from prometheus_client import REGISTRY

from service.config.file import CallLimits
from service.config.reader import ConfigError
from service.domain.errors import Overloaded, PermissionDenied, Unauthenticated
from service.edge.callers import address_key, address_of, peer_address
from service.infra.concurrency import CallLimiter
from service.infra.providers.catalog import parse_config
from service.usecases.auth import Authenticator, CallerCheck
from tests.support import config_dict

LIMITS = CallLimits(calls_per_caller=3, long_calls_per_caller=2, batches_per_caller=10, batches=15)


def refused(limit: str) -> float:
    return REGISTRY.get_sample_value("batchgate_calls_refused_total", {"limit": limit}) or 0.0


# --- the limiter -----------------------------------------------------------------------------------


def test_a_caller_gets_its_calls_and_no_more_while_others_go_on() -> None:
    limiter = CallLimiter()
    held = [limiter.enter("vk:a", LIMITS) for _ in range(3)]
    before = refused("calls_per_caller")
    with pytest.raises(Overloaded) as info:
        limiter.enter("vk:a", LIMITS)
    error = info.value
    assert (error.status_code, error.code, error.type) == (429, "too_many_concurrent_calls", "rate_limit_error")
    assert error.headers == {"retry-after": "1"}
    assert refused("calls_per_caller") == before + 1
    assert limiter.enter("vk:b", LIMITS) is not None  # another caller is not affected
    held[0].release()
    held[0].release()  # twice is once
    assert limiter.held("vk:a") == (2, 0, 0)
    limiter.enter("vk:a", LIMITS)


def test_long_calls_and_batches_are_bounded_per_caller_and_per_process() -> None:
    limiter = CallLimiter()
    first, second, third = (limiter.enter("vk:a", LIMITS) for _ in range(3))
    first.long_call(6, LIMITS)
    with pytest.raises(Overloaded, match="more than 10 batches"):
        second.long_call(5, LIMITS)  # 6 + 5 > batches_per_caller
    second.long_call(4, LIMITS)
    with pytest.raises(Overloaded, match="2 bulk or waiting calls"):
        third.long_call(1, LIMITS)
    assert limiter.held("vk:a") == (3, 2, 10) and limiter.batches == 10
    other = limiter.enter("vk:b", LIMITS)
    with pytest.raises(Overloaded, match="the service holds as many"):
        other.long_call(6, LIMITS)  # 10 + 6 > batches (the whole process)
    other.long_call(5, LIMITS)
    with first:
        pass  # ends the call: its long slot and its batches come back
    assert limiter.held("vk:a") == (2, 1, 4) and limiter.batches == 9
    for lease in (second, third, other):
        lease.release()
    assert limiter.held("vk:a") == limiter.held("vk:b") == (0, 0, 0) and limiter.batches == 0


def test_refusals_are_logged_at_most_every_ten_seconds_with_a_count(caplog) -> None:
    caplog.set_level(logging.WARNING, "service.infra.concurrency")
    now = [0.0]
    limiter = CallLimiter(clock=lambda: now[0])
    limiter.enter("ip:10.0.0.9", CallLimits(calls_per_caller=1))
    for _ in range(50):
        with pytest.raises(Overloaded):
            limiter.enter("ip:10.0.0.9", CallLimits(calls_per_caller=1))
    now[0] = 10.0
    with pytest.raises(Overloaded):
        limiter.enter("ip:10.0.0.9", CallLimits(calls_per_caller=1))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[1].endswith("calls_per_caller 50 (one caller: ip:10.0.0.9)")


# --- who the caller is -------------------------------------------------------------------------------

PROXIES = (ipaddress.ip_network("10.1.0.0/16"),)


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:127.0.0.1:40000", "127.0.0.1"),
        ("ipv6:%5B::1%5D:53380", "::1"),
        ("ipv6:%5B::ffff:192.0.2.7%5D:1", "192.0.2.7"),
        ("unix:", None),
        ("unix:/tmp/worker.sock", None),
        ("garbage", None),
    ],
)
def test_peer_address(peer: str, address: str | None) -> None:
    found = peer_address(peer)
    assert (str(found) if found is not None else None) == address


@pytest.mark.parametrize(
    ("peer", "forwarded", "caller"),
    [
        # Envoy over a worker's Unix socket: the address it appended (the last entry) is the caller.
        ("unix:", "203.0.113.9", "ip:203.0.113.9"),
        ("unix:", "1.2.3.4, 198.51.100.7", "ip:198.51.100.7"),
        ("unix:", "", "ip:local"),  # Envoy's own health checks
        ("unix:", "not an address", "ip:local"),
        # A trusted proxy by address.
        ("ipv4:10.1.2.3:5000", "198.51.100.7", "ip:198.51.100.7"),
        # Anyone else is its own address, whatever it claims.
        ("ipv4:192.0.2.1:5000", "198.51.100.7", "ip:192.0.2.1"),
        # IPv6 callers count per /64.
        ("ipv6:%5B2001:db8:1:2:aaaa::1%5D:5000", "", "ip:2001:db8:1:2::/64"),
        ("unix:", "2001:db8:1:2:bbbb::7", "ip:2001:db8:1:2::/64"),
    ],
)
def test_the_caller_of_a_call_without_credentials_is_its_address(peer: str, forwarded: str, caller: str) -> None:
    headers = {"x-forwarded-for": forwarded} if forwarded else {}
    assert address_of(headers, peer, PROXIES) == caller


def test_address_key_groups_ipv6_hosts() -> None:
    assert address_key(ipaddress.ip_address("2001:db8::1")) == address_key(ipaddress.ip_address("2001:db8::ffff"))
    assert address_key(ipaddress.ip_address("192.0.2.1")) != address_key(ipaddress.ip_address("192.0.2.2"))


VK = "sk-bf-unit-fair-share-team"


def authenticator(**client) -> Authenticator:
    data = config_dict("http://127.0.0.1:9", **client)
    data["governance"] = {
        "virtual_keys": [
            {"id": "team", "value": VK, "provider_configs": [{"provider": "openai"}]},
            {"id": "off", "value": VK + "-off", "is_active": False, "provider_configs": []},
        ]
    }
    data["auth_config"] = {"is_enabled": True, "admin_username": "admin", "admin_password": "pw-0123456789"}
    return Authenticator(parse_config(data, {}))


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.mark.parametrize(
    ("headers", "caller"),
    [
        ({"x-bf-vk": VK}, "vk:team"),
        ({"authorization": f"Bearer {VK}"}, "vk:team"),
        ({"x-bf-vk": VK + "-off"}, "vk:off"),  # known but inactive: still that caller's share
        ({"x-bf-vk": "sk-bf-unknown-0000"}, None),
        (basic("admin", "pw-0123456789"), "admin"),
        (basic("admin", "wrong"), None),
        ({"authorization": "Bearer sk-provider-own-key"}, None),  # direct keys are off
        ({}, None),
    ],
)
def test_caller_key_from_credentials_this_config_knows(headers: dict[str, str], caller: str | None) -> None:
    assert authenticator().caller_key(headers) == caller


def test_a_direct_key_is_its_own_caller_where_direct_keys_are_allowed() -> None:
    auth = authenticator(allow_direct_keys=True)
    first = auth.caller_key({"authorization": "Bearer sk-provider-own-key"})
    assert first is not None and first.startswith("key:") and "sk-provider" not in first
    assert first == auth.caller_key({"x-api-key": "sk-provider-own-key"})
    assert first != auth.caller_key({"x-api-key": "sk-provider-other-key"})


# --- a running call's caller, against the current config ----------------------------------------------


def test_caller_check_follows_the_current_config() -> None:
    current = [authenticator()]
    now = [1_000.0]
    check = CallerCheck({"x-bf-vk": VK}, lambda: current[0], clock=lambda: now[0])
    assert check.check("openai") is None  # allowed, no expiry

    data = config_dict("http://127.0.0.1:9")
    keys = [{"id": "team", "value": VK, "provider_configs": [{"provider": "openai"}], "expires_at": 1_030}]
    data["governance"] = {"virtual_keys": keys}
    current[0] = Authenticator(parse_config(data, {}), clock=lambda: now[0])
    assert check.check("openai") == 30.0
    with pytest.raises(PermissionDenied) as blocked:
        check.check("azure")
    assert blocked.value.code == "provider_blocked"
    now[0] = 1_030.0
    with pytest.raises(Unauthenticated) as expired:
        check.check("openai")
    assert expired.value.code == "virtual_key_not_found"
    keys[0].update(is_active=False, expires_at=None)
    current[0] = Authenticator(parse_config(data, {}))
    with pytest.raises(Unauthenticated):
        check.check("openai")


# --- client.limits in the config -------------------------------------------------------------------


def test_limits_default_and_parse() -> None:
    assert parse_config({}, {}).client.limits == CallLimits()
    limits = parse_config(
        {"client": {"limits": {"calls_per_caller": 8, "long_calls_per_caller": 2, "trusted_proxies": ["10.0.0.0/8"]}}},
        {},
    ).client.limits
    assert (limits.calls_per_caller, limits.long_calls_per_caller, limits.batches) == (8, 2, 5000)
    assert limits.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"calls_per_caller": 0}, "client.limits.calls_per_caller: must be between 1 and 1000000"),
        ({"batches": "many"}, "client.limits.batches: expected an integer, got str"),
        ({"calls_per_caller": 4}, "client.limits.long_calls_per_caller: must not be more than calls_per_caller"),
        ({"batches": 100}, "client.limits.batches_per_caller: must not be more than batches"),
        ({"trusted_proxies": ["10.0.0.0/33"]}, "client.limits.trusted_proxies[0]: expected an address or a CIDR"),
        ({"trusted_proxies": [7]}, "client.limits.trusted_proxies[0]: expected a string, got int"),
    ],
)
def test_bad_limits_name_the_field(limits: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"client": {"limits": limits}}, {})
    assert str(info.value).startswith(message)
