"""The Authenticator on its own: who a caller is from its headers, what it may use, with the
clock injected (virtual key expiry) and an in-memory rate-limit store. No network, no sleeping."""

from __future__ import annotations

import base64

import pytest

from service.domain.errors import Overloaded, PermissionDenied, Unauthenticated
from service.edge import envelope
from service.infra.providers.catalog import parse_config
from service.usecases.auth import Authenticator, exposure_problem
from tests.support import OPENAI_KEYS, config_dict

VK_TEAM = "sk-bf-team-a-0123456789abcdef"
VK_SCOPED = "sk-bf-second-key-012345678"
VK_INACTIVE = "sk-bf-inactive-0123456789ab"
VK_EXPIRING = "sk-bf-expiring-0123456789ab"
VK_LIMITED = "sk-bf-limited-0123456789abc"
EXPIRES_AT = 1_900_000_000
ADMIN = ("admin", "s3cret-gateway-password")


def config(*, admin: bool = True, **client):
    data = config_dict("http://127.0.0.1:9", **client)
    data["providers"]["openai"]["keys"].append({"name": "second", "value": OPENAI_KEYS[1], "use_for_batch_api": True})
    data["governance"] = {
        "rate_limits": [{"id": "two", "request_max_limit": 2, "request_reset_duration": "1m"}],
        "virtual_keys": [
            {"id": "team-a", "value": VK_TEAM, "provider_configs": [{"provider": "openai"}, {"provider": "azure"}]},
            {"id": "scoped", "value": VK_SCOPED, "provider_configs": [{"provider": "openai", "key_ids": ["second"]}]},
            {"id": "inactive", "value": VK_INACTIVE, "is_active": False, "provider_configs": [{"provider": "openai"}]},
            {
                "id": "expiring",
                "value": VK_EXPIRING,
                "expires_at": EXPIRES_AT,
                "provider_configs": [{"provider": "openai"}],
            },
            {
                "id": "limited",
                "value": VK_LIMITED,
                "rate_limit_id": "two",
                "provider_configs": [{"provider": "openai"}],
            },
        ],
    }
    if admin:  # gateway credentials make every call authenticate
        data["auth_config"] = {"is_enabled": True, "admin_username": ADMIN[0], "admin_password": ADMIN[1]}
    return parse_config(data, env={})


def basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class Clock:
    now = float(EXPIRES_AT - 10)

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def auth(clock):
    return Authenticator(config(), clock=clock)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-bf-vk": VK_TEAM},
        {"authorization": f"Bearer {VK_TEAM}"},
        {"x-api-key": VK_TEAM},
        {"x-goog-api-key": VK_TEAM},
        {"authorization": f"bearer  {VK_TEAM} "},
    ],
    ids=["x-bf-vk", "bearer", "x-api-key", "x-goog-api-key", "bearer-lowercase-spaces"],
)
def test_a_virtual_key_in_any_carrier(auth, headers):
    caller = auth.authenticate(headers)
    assert caller.identity == "vk:team-a" and caller.virtual_key.id == "team-a" and caller.direct_key is None


@pytest.mark.parametrize("value", ["sk-bf-unknown-000000000000", VK_INACTIVE], ids=["unknown", "inactive"])
def test_unknown_and_inactive_keys_get_one_answer(auth, value):
    with pytest.raises(Unauthenticated) as info:
        auth.authenticate({"x-bf-vk": value})
    assert (info.value.code, info.value.message) == ("virtual_key_not_found", "virtual key not found")
    assert value not in repr(envelope.error_body(info.value))


def test_a_key_expires_at_its_time(auth, clock):
    assert auth.authenticate({"x-bf-vk": VK_EXPIRING}).identity == "vk:expiring"
    clock.now = EXPIRES_AT
    with pytest.raises(Unauthenticated, match="virtual key not found"):
        auth.authenticate({"x-bf-vk": VK_EXPIRING})


def test_gateway_credentials(auth):
    assert auth.authenticate(basic(*ADMIN)).identity == "admin"
    for headers in (basic(ADMIN[0], "wrong"), {"authorization": "Basic !!!not-base64"}):
        with pytest.raises(Unauthenticated) as info:
            auth.authenticate(headers)
        assert info.value.code == "invalid_credentials"


def test_anonymous_unless_required():
    assert Authenticator(config(admin=False)).authenticate({}).identity == "anonymous"
    for required in (config(), config(admin=False, enforce_auth_on_inference=True)):
        with pytest.raises(Unauthenticated) as info:
            Authenticator(required).authenticate({})
    assert info.value.code == "virtual_key_required"


def test_direct_keys_only_when_allowed():
    headers = {"authorization": "Bearer sk-provider-own-key"}
    assert Authenticator(config(admin=False)).authenticate(headers).direct_key is None
    caller = Authenticator(config(admin=False, allow_direct_keys=True)).authenticate(headers)
    assert (caller.identity, caller.direct_key) == ("anonymous", "sk-provider-own-key")
    assert "sk-provider-own-key" not in repr(caller)


async def test_authorize_scopes_providers_and_keys(auth):
    team = auth.authenticate({"x-bf-vk": VK_TEAM})
    assert await auth.authorize(team, "openai") is None  # every configured key
    scoped = auth.authenticate({"x-bf-vk": VK_SCOPED})
    assert await auth.authorize(scoped, "openai") == frozenset({"second"})
    with pytest.raises(PermissionDenied) as info:
        await auth.authorize(scoped, "azure")
    assert (info.value.status_code, info.value.code, info.value.provider) == (403, "provider_blocked", "azure")
    assert await auth.authorize(auth.authenticate(basic(*ADMIN)), "anything") is None


async def test_authorize_counts_a_limited_key(auth):
    limited = auth.authenticate({"x-bf-vk": VK_LIMITED})
    for _ in range(2):
        await auth.authorize(limited, "openai")
    with pytest.raises(Overloaded) as info:
        await auth.authorize(limited, "openai")
    assert info.value.status_code == 429


# An open gateway (no virtual key or gateway credentials required) listens on loopback only
# (README, Access control). Hosts written out: loopback in every spelling, and what is not.
LOOPBACK_HOSTS = ["127.0.0.1", "127.8.9.10", "::1", "[::1]", "localhost"]
PUBLIC_HOSTS = ["0.0.0.0", "10.1.2.3", "192.168.0.7", "::", "[::]", "2001:db8::1", "example.internal", ""]
OPEN_REFUSAL = (
    "refusing to listen on {host}: the gateway is open (no virtual key or gateway credentials are required). "
    "Set client.enforce_auth_on_inference or auth_config, or set client.allow_unauthenticated_public to "
    "expose it anyway."
)


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_an_open_gateway_may_listen_on_loopback(host):
    assert exposure_problem(config(admin=False), host) is None


@pytest.mark.parametrize("host", PUBLIC_HOSTS)
def test_an_open_gateway_refuses_any_other_address(host):
    assert exposure_problem(config(admin=False), host) == OPEN_REFUSAL.format(host=host)


@pytest.mark.parametrize(
    "settings",
    [{"admin": True}, {"admin": False, "enforce_auth_on_inference": True}, {"admin": False,
     "allow_unauthenticated_public": True}],
    ids=["gateway credentials", "virtual keys enforced", "explicitly public"],
)  # fmt: skip
@pytest.mark.parametrize("host", PUBLIC_HOSTS[:2])
def test_a_gateway_that_requires_credentials_or_is_declared_public_may_listen_anywhere(settings, host):
    assert exposure_problem(config(**settings), host) is None


@pytest.mark.parametrize("value", ["sk-bf-\udcff-lone-surrogate", "\ud800"])
def test_a_key_no_text_encoding_can_hold_is_unknown_not_a_crash(auth, value):
    """Header values decoded with surrogate escapes reach the digest: one answer, as for any unknown key."""
    with pytest.raises(Unauthenticated) as info:
        auth.authenticate({"x-bf-vk": value})
    assert info.value.code == "virtual_key_not_found"
