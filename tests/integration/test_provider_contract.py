"""What every provider does through batchgate, over real gRPC (grpc.aio on loopback) against its
simulator over real HTTP: one test per behaviour, parametrized over the catalog
(`service.infra.providers.catalog`). Where providers legitimately differ (the status of a refused cancel,
the id format) the simulator says so (`sandbox.core.ProviderSim`), so a provider added to the
catalog and to the sandbox is checked here with no edit to this file. What is specific to one
provider stays in its own `test_provider_<name>.py`."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from sandbox.core import ProviderSim
from sandbox.server import SIMULATORS
from service.infra.providers.base import UpstreamResponse, decode_json
from service.infra.providers.catalog import ADAPTERS, KNOWN_PROVIDERS, NO_BATCH_CANCEL, parse_config
from tests import support
from tests.support import SANDBOX_KEYS, running_service, sim_config

SIMS: dict[str, type[ProviderSim]] = {sim.name: sim for sim in SIMULATORS}
CAN_CANCEL = sorted(ADAPTERS)
# Ids no provider may send upstream: each would change the path, query or fragment.
UNSAFE_IDS = ["a/b", "batches/a/b", "batches/../x", "batches/", "../x", "a%2Fb", "..", "a?b", "x?alt=json", "a#b",
              "a\\b", "a b", "a\x00b"]  # fmt: skip


def key_for(provider: str) -> str:
    """The key the test sandbox accepts for `provider` (tests.conftest)."""
    return SANDBOX_KEYS.get(provider, [SIMS[provider].default_key])[0]


def config_for(sandbox, provider: str, key: str | None = None) -> dict:
    return sim_config(SIMS[provider], sandbox.url, key or key_for(provider))


def code_for(status: int) -> grpc.StatusCode:
    return {400: grpc.StatusCode.INVALID_ARGUMENT, 401: grpc.StatusCode.UNAUTHENTICATED,
            403: grpc.StatusCode.PERMISSION_DENIED, 409: grpc.StatusCode.FAILED_PRECONDITION}[status]  # fmt: skip


def test_every_provider_that_can_cancel_has_a_simulator_and_every_simulator_a_catalog_entry():
    assert set(ADAPTERS) <= SIMS.keys()
    assert SIMS.keys() <= KNOWN_PROVIDERS
    assert not ADAPTERS.keys() & NO_BATCH_CANCEL


@pytest.fixture(params=CAN_CANCEL)
def provider(request) -> str:
    return request.param


@pytest.fixture
async def service(sandbox, sim, provider):
    async with running_service(config_for(sandbox, provider)) as (_, stub):
        yield stub


async def test_cancel_answers_the_batch_in_unified_terms_with_the_configured_key(service, sim, provider):
    batch = sim.seed(provider, SIMS[provider].new_batch_id(), cancel_delay_s=3600)
    response = await support.cancel(
        service, batch.id, provider, metadata=(("authorization", "Bearer caller-secret"), ("x-api-key", "caller-2"))
    )
    assert response.id.endswith(batch.id)  # Bedrock answers with the job's ARN
    assert response.status in ("cancelling", "cancelled") and response.extra_fields.provider == provider
    calls = sim.calls(provider)
    cancels = [call for call in calls if call["method"] == "POST" and not call["path"].endswith("/token")]
    assert len(cancels) == 1 and batch.id in cancels[0]["path"]
    assert "caller-secret" not in str(calls) and "caller-2" not in str(calls)


async def test_unknown_batch_is_not_found(service, sim, provider):
    err, detail = await support.cancel_failure(service, SIMS[provider].new_batch_id(), provider)
    assert (err.code(), detail.status_code, detail.is_bifrost_error) == (grpc.StatusCode.NOT_FOUND, 404, False)
    assert detail.extra_fields.provider == provider


async def test_finished_batch_is_refused_once_with_the_providers_status(service, sim, provider):
    batch = sim.seed(provider, SIMS[provider].new_batch_id(), status="completed")
    err, detail = await support.cancel_failure(service, batch.id, provider)
    expected = SIMS[provider].finished_cancel_status
    assert (err.code(), detail.status_code, detail.is_bifrost_error) == (code_for(expected), expected, False)
    assert detail.error.message
    assert sim.batch(provider, batch.id).status == "completed"
    api_calls = [call for call in sim.calls(provider) if not call["path"].endswith("/token")]
    assert len(api_calls) == 1  # settled: neither retried nor tried with another key


async def test_unknown_key_is_refused_and_never_echoed(sandbox, sim, provider):
    sim_cls = SIMS[provider]
    batch = sim.seed(provider, sim_cls.new_batch_id())
    async with running_service(config_for(sandbox, provider, sim_cls.unknown_key())) as (_, stub):
        err, detail = await support.cancel_failure(stub, batch.id, provider)
    expected = sim_cls.unknown_key_status
    assert (err.code(), detail.status_code) == (code_for(expected), expected)
    assert sim_cls.unknown_key().split(":")[-1] not in str(detail)  # Bedrock's is ACCESS:SECRET
    assert sim.batch(provider, batch.id).status == "in_progress"


async def test_rate_limited_answer_keeps_429(service, sim, provider):
    sim.add_fault(provider, {"status": 429})
    err, detail = await support.cancel_failure(service, SIMS[provider].new_batch_id(), provider)
    assert (err.code(), detail.status_code, detail.is_bifrost_error) == (grpc.StatusCode.RESOURCE_EXHAUSTED, 429, False)


@pytest.mark.parametrize("batch_id", UNSAFE_IDS)
async def test_unsafe_ids_never_reach_the_provider(service, sim, provider, batch_id):
    err, detail = await support.cancel_failure(service, batch_id, provider)
    assert (err.code(), detail.status_code, detail.error.param) == (grpc.StatusCode.INVALID_ARGUMENT, 400, "batch_id")
    assert sim.calls(provider) == []


# The header in which each provider documents taking a caller's own request id, written out from
# the providers' documentation (never read from the adapter under test): OpenAI's API reference,
# "Debugging requests" (X-Client-Request-Id); Azure's REST API common request headers
# (x-ms-client-request-id). The others document no such header (Anthropic, Google and AWS return a
# request id of their own; Groq's OpenAI-compatible API documents none), so the id goes to none of them.
REQUEST_ID_HEADERS = {
    "openai": "X-Client-Request-Id",
    "azure": "x-ms-client-request-id",
    "groq": None,
    "anthropic": None,
    "gemini": None,
    "vertex": None,
    "bedrock": None,
    "mistral": None,
    "together": None,
    "xai": None,
    "cohere": None,
}


def test_the_request_id_table_names_every_provider_that_can_cancel():
    assert sorted(REQUEST_ID_HEADERS) == CAN_CANCEL


async def test_request_id_is_sent_where_the_provider_documents_one(service, sim, provider):
    batch = sim.seed(provider, SIMS[provider].new_batch_id(), cancel_delay_s=3600)
    await support.cancel(service, batch.id, provider, metadata=(("x-request-id", "contract-req-1"),))
    expected = REQUEST_ID_HEADERS[provider]
    calls = [call for call in sim.calls(provider) if not call["path"].endswith("/token")]
    assert calls
    for call in calls:
        carrying = sorted(name.lower() for name, value in call["headers"].items() if "contract-req-1" in value)
        assert carrying == ([expected.lower()] if expected else []), (call["method"], call["path"])


async def test_direct_key_is_used_only_where_the_key_value_is_the_credential(sandbox, sim, provider):
    sim_cls = SIMS[provider]
    batch = sim.seed(provider, sim_cls.new_batch_id(), cancel_delay_s=3600)
    config = config_for(sandbox, provider, sim_cls.unknown_key())
    config["client"] = {"allow_direct_keys": True}
    metadata = (("x-api-key", key_for(provider)),)
    async with running_service(config) as (_, stub):
        if ADAPTERS[provider].accepts_direct_keys:
            response = await support.cancel(stub, batch.id, provider, metadata=metadata)
            assert response.status in ("cancelling", "cancelled")
        else:
            err, detail = await support.cancel_failure(stub, batch.id, provider, metadata=metadata)
            assert (err.code(), detail.error.code) == (grpc.StatusCode.INVALID_ARGUMENT, "direct_key_unsupported")
            assert sim.calls(provider) == []


@pytest.mark.parametrize("status", ["in_progress", "cancelled"])
async def test_retrieve_reads_the_batch_back_in_unified_terms(sandbox, sim, provider, status):
    """The documented read of one batch (what waiting for a cancel uses), parsed by the adapter."""
    batch = sim.seed(provider, SIMS[provider].new_batch_id(), status=status)
    config = parse_config(config_for(sandbox, provider), env={})
    adapter = ADAPTERS[provider](config.providers[provider])
    key = adapter.config.batch_keys[0]
    request = await adapter.prepare(key, adapter.retrieve_request(key, adapter.parse_id(batch.id)))
    async with aiohttp.ClientSession() as session:
        async with session.request(request.method, request.url, headers=request.headers, data=request.body) as answer:
            body = await answer.read()
            response = UpstreamResponse(answer.status, answer.headers, body)
    assert response.status == 200, body
    state = adapter.parse_batch(batch.id, decode_json(response, provider))
    assert state.id.endswith(batch.id) and state.status == status


@pytest.mark.parametrize("name", sorted(NO_BATCH_CANCEL))
async def test_providers_that_cannot_cancel_refuse_before_any_call(sandbox, sim, name):
    async with running_service({"providers": {}}) as (_, stub):
        err, detail = await support.cancel_failure(stub, "batch_1", name)
    assert (err.code(), detail.status_code, detail.error.code) == (
        grpc.StatusCode.INVALID_ARGUMENT, 400, "unsupported_operation",
    )  # fmt: skip
    assert f"batch cancel is not supported by provider: {name}" in detail.error.message
    assert detail.extra_fields.provider == name
    assert sim.calls() == []
