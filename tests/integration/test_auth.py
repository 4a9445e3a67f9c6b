"""Access control over real gRPC: virtual keys, direct keys, gateway credentials, rate limits.
A refused call must never reach a provider (the simulator records every call)."""

from __future__ import annotations

import base64
import json
import uuid

import grpc
import pytest

from sandbox.anthropic import AnthropicSim
from sandbox.bedrock import BedrockSim
from sandbox.google import GeminiSim
from sandbox.openai import OpenAISim
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from tests.integration.test_cancel_grpc import cancel, cancel_error, error_detail
from tests.support import OPENAI_KEYS, config_dict, running_service, sim_config

VK_TEAM = "sk-bf-team-a-0123456789abcdef"
VK_AZURE_ONLY = "sk-bf-azure-only-0123456789"
VK_INACTIVE = "sk-bf-inactive-0123456789ab"
VK_EXPIRED = "sk-bf-expired-0123456789abc"
VK_LIMITED = "sk-bf-limited-0123456789abc"
VK_SECOND_KEY = "sk-bf-second-key-012345678"
ADMIN = ("admin", "s3cret-gateway-password")


def governed(sandbox_url: str, **client) -> dict:
    config = config_dict(sandbox_url, **client)
    config["providers"]["openai"]["keys"].append({"name": "second", "value": OPENAI_KEYS[1], "use_for_batch_api": True})
    config["governance"] = {
        "rate_limits": [{"id": "two-per-minute", "request_max_limit": 2, "request_reset_duration": "1m"}],
        "virtual_keys": [
            {"id": "team-a", "value": VK_TEAM, "provider_configs": [{"provider": "openai"}, {"provider": "azure"}]},
            {"id": "azure-only", "value": VK_AZURE_ONLY, "provider_configs": [{"provider": "azure"}]},
            {"id": "inactive", "value": VK_INACTIVE, "is_active": False, "provider_configs": [{"provider": "openai"}]},
            {
                "id": "expired",
                "value": VK_EXPIRED,
                "expires_at": "2020-01-01T00:00:00Z",
                "provider_configs": [{"provider": "openai"}],
            },
            {
                "id": "limited",
                "value": VK_LIMITED,
                "rate_limit_id": "two-per-minute",
                "provider_configs": [{"provider": "openai"}],
            },
            {
                "id": "second-key",
                "value": VK_SECOND_KEY,
                "provider_configs": [{"provider": "openai", "key_ids": ["second"]}],
            },
        ],
    }
    return config


def new_id() -> str:
    return f"batch_{uuid.uuid4().hex[:16]}"


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
async def enforced(sandbox, sim):
    config = governed(sandbox.url, enforce_auth_on_inference=True)
    config["auth_config"] = {"is_enabled": True, "admin_username": ADMIN[0], "admin_password": ADMIN[1]}
    async with running_service(config) as (_, stub):
        yield stub


@pytest.mark.parametrize(
    "metadata",
    [
        (("x-bf-vk", VK_TEAM),),
        (("authorization", f"Bearer {VK_TEAM}"),),
        (("x-api-key", VK_TEAM),),
        (("x-goog-api-key", VK_TEAM),),
        (("authorization", basic(*ADMIN)),),
    ],
)
async def test_each_credential_form_is_accepted(enforced, sim, metadata):
    batch = sim.seed("openai", new_id())
    response = await cancel(enforced, batch.id, metadata=metadata)
    assert response.status == "cancelling"
    (call,) = sim.calls("openai")
    assert call["headers"]["Authorization"] == f"Bearer {OPENAI_KEYS[0]}"  # the gateway's key, never the caller's
    assert VK_TEAM not in str(call["headers"])


@pytest.mark.parametrize(
    ("metadata", "status", "code"),
    [
        ((), 401, "virtual_key_required"),
        ((("authorization", "Bearer sk-some-provider-key"),), 401, "virtual_key_required"),
        ((("x-bf-vk", "sk-bf-unknown-000000000000"),), 401, "virtual_key_not_found"),
        ((("x-bf-vk", VK_INACTIVE),), 401, "virtual_key_not_found"),
        ((("x-bf-vk", VK_EXPIRED),), 401, "virtual_key_not_found"),
        ((("authorization", basic("admin", "wrong")),), 401, "invalid_credentials"),
        ((("authorization", "Basic !!!notbase64"),), 401, "invalid_credentials"),
        ((("x-bf-vk", VK_AZURE_ONLY),), 403, "provider_blocked"),
    ],
)
async def test_refused_calls_never_reach_the_provider(enforced, sim, metadata, status, code):
    err = await cancel_error(enforced, new_id(), metadata=metadata)
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code) == (status, code)
    assert err.code() == (grpc.StatusCode.UNAUTHENTICATED if status == 401 else grpc.StatusCode.PERMISSION_DENIED)
    assert sim.calls() == []


async def test_blocked_provider_message_names_it(enforced, sim):
    err = await cancel_error(enforced, new_id(), metadata=(("x-bf-vk", VK_AZURE_ONLY),))
    assert error_detail(err).error.message == "Provider 'openai' is not allowed for this virtual key"


async def test_unknown_and_expired_keys_get_the_same_answer(enforced, sim):
    unknown = error_detail(await cancel_error(enforced, new_id(), metadata=(("x-bf-vk", "sk-bf-nope-000000"),)))
    expired = error_detail(await cancel_error(enforced, new_id(), metadata=(("x-bf-vk", VK_EXPIRED),)))
    assert unknown == expired


async def test_virtual_key_limits_which_configured_keys_are_used(enforced, sim):
    batch = sim.seed("openai", new_id())
    await cancel(enforced, batch.id, metadata=(("x-bf-vk", VK_SECOND_KEY),))
    assert [c["headers"]["Authorization"] for c in sim.calls("openai")] == [f"Bearer {OPENAI_KEYS[1]}"]


async def test_rate_limit_per_virtual_key_answers_429_with_retry_after(enforced, sim):
    metadata = (("x-bf-vk", VK_LIMITED),)
    for _ in range(2):
        await cancel(enforced, sim.seed("openai", new_id()).id, metadata=metadata)
    call = enforced.Cancel(pb.CancelBatchRequest(batch_id=new_id(), provider="openai"), metadata=metadata)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    detail = error_detail(info.value)
    assert (detail.status_code, detail.error.code) == (429, "rate_limited")
    headers = dict(await call.initial_metadata())
    assert 1 <= int(headers["retry-after"]) <= 60
    assert len(sim.calls("openai")) == 2
    # Other keys are not limited by it.
    await cancel(enforced, sim.seed("openai", new_id()).id, metadata=(("x-bf-vk", VK_TEAM),))


async def test_open_gateway_ignores_caller_credentials_without_direct_keys(sandbox, sim):
    async with running_service(config_dict(sandbox.url)) as (_, stub):
        batch = sim.seed("openai", new_id())
        await cancel(stub, batch.id, metadata=(("authorization", "Bearer sk-callers-own-key-123456"),))
    assert sim.calls("openai")[0]["headers"]["Authorization"] == f"Bearer {OPENAI_KEYS[0]}"


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
async def test_direct_key_is_used_instead_of_configured_keys(sandbox, sim, header):
    value = OPENAI_KEYS[1] if header == "x-api-key" else f"Bearer {OPENAI_KEYS[1]}"
    async with running_service(config_dict(sandbox.url, allow_direct_keys=True)) as (_, stub):
        batch = sim.seed("openai", new_id())
        response = await cancel(stub, batch.id, metadata=((header, value),))
    assert response.status == "cancelling"
    assert [c["headers"]["Authorization"] for c in sim.calls("openai")] == [f"Bearer {OPENAI_KEYS[1]}"]


async def test_direct_key_for_azure_keeps_the_configured_endpoint(sandbox, sim):
    async with running_service(config_dict(sandbox.url, allow_direct_keys=True)) as (_, stub):
        batch = sim.seed("azure", new_id())
        err = await cancel_error(stub, batch.id, provider="azure", metadata=(("x-api-key", "az-wrong-key-0000000"),))
    assert error_detail(err).status_code == 401
    (call,) = sim.calls("azure")
    assert call["path"].startswith("/azure/openai/batches/") and call["headers"]["api-key"] == "az-wrong-key-0000000"


async def test_virtual_key_wins_over_direct_key(sandbox, sim):
    config = governed(sandbox.url, allow_direct_keys=True)
    async with running_service(config) as (_, stub):
        batch = sim.seed("openai", new_id())
        await cancel(stub, batch.id, metadata=(("authorization", f"Bearer {VK_TEAM}"), ("x-api-key", "sk-direct-x")))
    assert sim.calls("openai")[0]["headers"]["Authorization"] == f"Bearer {OPENAI_KEYS[0]}"


# --- scope on every route: the native one, OpenAI's and the drop-in SDK routes ----------------------

VK_ONLY = {provider: f"sk-bf-only-{provider}-0123456789" for provider in ("openai", "anthropic", "gemini", "bedrock")}
# Each cancel route: its RPC, the surface its path names, the provider it cancels on when the call
# names none, and the REST path Envoy reports (x-envoy-original-path) for a batch id.
ROUTES = {
    "native": ("Cancel", "", "openai", "/v1/batches/{id}/cancel?provider=openai"),
    "openai": ("Cancel", "openai", "openai", "/openai/v1/batches/{id}/cancel"),
    "anthropic": ("CancelAnthropic", "anthropic", "anthropic", "/anthropic/v1/messages/batches/{id}/cancel"),
    "genai": ("CancelGenAI", "genai", "gemini", "/genai/v1beta/batches/{id}:cancel"),
    "bedrock": ("StopModelInvocationJob", "bedrock", "bedrock", "/bedrock/model-invocation-job/{id}/stop"),
}
SIMULATED = {"openai": OpenAISim, "anthropic": AnthropicSim, "gemini": GeminiSim, "bedrock": BedrockSim}
# What a REST caller of each route reads when the key may not use its provider (written out, not
# rendered by the code under test): the route's own error shape, as each provider's SDK parses it.
BLOCKED_BODIES = {
    "native": {
        "is_bifrost_error": True,
        "status_code": 403,
        "error": {"type": "permission_error", "code": "provider_blocked",
                  "message": "Provider 'openai' is not allowed for this virtual key", "param": None},
        "extra_fields": {"provider": "openai", "request_type": "batch_cancel"},
    },
    "anthropic": {"type": "error", "error": {"type": "permission_error",
                                             "message": "Provider 'anthropic' is not allowed for this virtual key"}},
    "genai": {"error": {"code": 403, "message": "Provider 'gemini' is not allowed for this virtual key",
                        "status": "PERMISSION_DENIED"}},
    "bedrock": {"message": "Provider 'bedrock' is not allowed for this virtual key"},
}  # fmt: skip
BLOCKED_BODIES["openai"] = BLOCKED_BODIES["native"]


def every_route_config(sandbox_url: str) -> dict:
    """OpenAI, Anthropic, Gemini, Bedrock and Azure against the sandbox; a virtual key per provider
    and one for Azure alone (which may use none of the routes' own providers)."""
    config = governed(sandbox_url, enforce_auth_on_inference=True)
    for provider, sim_cls in SIMULATED.items():
        if provider != "openai":
            config["providers"].update(sim_config(sim_cls, sandbox_url)["providers"])
    config["governance"]["virtual_keys"] += [
        {"id": f"only-{provider}", "value": value, "provider_configs": [{"provider": provider}]}
        for provider, value in VK_ONLY.items()
    ]
    return config


@pytest.fixture
async def every_route(sandbox, sim):
    async with running_service(every_route_config(sandbox.url)) as (_, stub):
        yield stub


async def call_route(stub, route: str, batch_id: str, metadata: tuple, via: str) -> tuple[grpc.aio.Call, object]:
    """One call of `route` over gRPC, or as Envoy passes a REST call of it on (the path in
    x-envoy-original-path); returns the call and its answer, or the error it ended with."""
    rpc, surface, _, path = ROUTES[route]
    if via == "rest":
        metadata = (*metadata, ("x-envoy-original-path", path.format(id=batch_id)))
    provider = "openai" if route == "native" else ""
    call = getattr(stub, rpc)(pb.CancelBatchRequest(batch_id=batch_id, provider=provider, surface=surface),
                              metadata=metadata)  # fmt: skip
    try:
        return call, await call
    except grpc.aio.AioRpcError as err:
        return call, err


@pytest.mark.parametrize("via", ["grpc", "rest"])
@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_key_scoped_to_other_providers_is_refused_on_every_route_before_any_upstream_call(
    every_route, sim, route, via
):
    provider = ROUTES[route][2]
    batch = sim.seed(provider, SIMULATED[provider].new_batch_id())

    call, err = await call_route(every_route, route, batch.id, (("x-bf-vk", VK_AZURE_ONLY),), via)

    assert isinstance(err, grpc.aio.AioRpcError), f"the {route} route cancelled for a key scoped to azure"
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code, detail.extra_fields.provider) == (403, "provider_blocked", provider)
    assert detail.error.message == f"Provider '{provider}' is not allowed for this virtual key"
    metadata = dict(await call.initial_metadata())
    if via == "rest":  # the edge gets the route's own error body (a native gRPC caller never does)
        assert json.loads(metadata["x-bf-error-body"]) == BLOCKED_BODIES[route]
        assert metadata["x-bf-status"] == "403"
        if route == "bedrock":
            assert metadata["x-amzn-errortype"] == "AccessDeniedException"
    else:
        assert "x-bf-error-body" not in metadata
    assert sim.calls() == []
    assert sim.batch(provider, batch.id).status == "in_progress"


@pytest.mark.parametrize("via", ["grpc", "rest"])
@pytest.mark.parametrize("route", list(ROUTES))
async def test_a_key_scoped_to_the_routes_provider_cancels_there(every_route, sim, route, via):
    """The other side of the refusal: the same route and batch with the key for its provider."""
    provider = ROUTES[route][2]
    batch = sim.seed(provider, SIMULATED[provider].new_batch_id(), cancel_delay_s=3600)

    _, answer = await call_route(every_route, route, batch.id, (("x-bf-vk", VK_ONLY[provider]),), via)

    assert not isinstance(answer, grpc.aio.AioRpcError), answer
    assert sim.batch(provider, batch.id).status == "cancelling"


@pytest.mark.parametrize("route", ["openai", "anthropic", "genai", "bedrock"])
async def test_the_scope_is_checked_for_the_provider_called_not_the_route(every_route, sim, route):
    """x-model-provider sends a drop-in route's call to another provider: a key scoped to the
    route's own provider may not follow it there."""
    own = ROUTES[route][2]
    other = "anthropic" if own == "openai" else "openai"
    batch = sim.seed(other, SIMULATED[other].new_batch_id())
    metadata = (("x-bf-vk", VK_ONLY[own]), ("x-model-provider", other))

    _, err = await call_route(every_route, route, batch.id, metadata, "rest")

    assert isinstance(err, grpc.aio.AioRpcError), f"the {route} route cancelled on {other} for a key scoped to {own}"
    detail = error_detail(err)
    assert (err.code(), detail.error.code, detail.extra_fields.provider) == (
        grpc.StatusCode.PERMISSION_DENIED, "provider_blocked", other,
    )  # fmt: skip
    assert sim.calls() == []
