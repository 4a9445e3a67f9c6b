"""Groq over real gRPC (grpc.aio on loopback) against the Groq simulator over real HTTP: OpenAI's
batch API under `/openai/v1`, answered with the Batch itself."""

from __future__ import annotations

import time
import uuid
from functools import partial

import grpc
import pytest

from sandbox.groq import GroqSim
from tests import support
from tests.support import batch_keys, running_service, sim_config

SIM = GroqSim  # the `service` fixture (tests/conftest.py) runs batchgate with this simulator

KEY = GroqSim.default_key


def new_id() -> str:
    return f"batch_01{uuid.uuid4().hex[:24]}"


def config(sandbox, *keys: str) -> dict:
    """The simulator's block; with `keys`, those keys in order instead of its own."""
    return sim_config(GroqSim, sandbox.url, **({"keys": batch_keys(*keys)} if keys else {}))


cancel = partial(support.cancel, provider="groq")
cancel_failure = partial(support.cancel_failure, provider="groq")


async def test_cancel_reports_cancelling_with_counts_and_time(service, sim):
    batch = sim.seed("groq", new_id(), request_counts={"total": 30, "completed": 12, "failed": 2})
    response = await cancel(service, batch.id)
    state = sim.batch("groq", batch.id)
    assert (response.id, response.status) == (batch.id, "cancelling")
    counts = response.request_counts
    assert (counts.total, counts.completed, counts.failed) == (30, 12, 2)
    assert response.cancelling_at == state.cancelling_at and not response.HasField("cancelled_at")
    assert response.extra_fields.provider == "groq"


async def test_cancel_goes_to_the_openai_path_with_the_configured_key(service, sim):
    batch = sim.seed("groq", new_id())
    await cancel(service, batch.id, metadata=(("authorization", "Bearer caller-secret"),))
    (call,) = sim.calls("groq")
    assert (call["method"], call["path"]) == ("POST", f"/groq/openai/v1/batches/{batch.id}/cancel")
    assert call["headers"]["Authorization"] == f"Bearer {KEY}" and "caller-secret" not in str(call["headers"])


async def test_second_cancel_of_a_cancelling_batch_answers_its_state(service, sim):
    started = int(time.time()) - 60
    batch = sim.seed("groq", new_id(), status="cancelling", cancelling_at=started, cancel_delay_s=3600)
    response = await cancel(service, batch.id)
    assert (response.status, response.cancelling_at) == ("cancelling", started)


async def test_finished_batch_keeps_the_409_conflict(service, sim):
    batch = sim.seed("groq", new_id(), status="completed")
    err, detail = await cancel_failure(service, batch.id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (detail.status_code, detail.error.message, detail.error.type) == (
        409, "Cannot cancel a batch with status 'completed'.", "invalid_request_error",
    )  # fmt: skip


async def test_bad_credentials_then_a_good_key(sandbox, sim):
    batch = sim.seed("groq", new_id())
    async with running_service(config(sandbox, "gsk_revoked_000000000000")) as (_, stub):
        err, detail = await cancel_failure(stub, batch.id)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (detail.status_code, detail.error.message, detail.error.code) == (401, "Invalid API Key", "invalid_api_key")
    async with running_service(config(sandbox, "gsk_revoked_000000000000", KEY)) as (_, stub):
        assert (await cancel(stub, batch.id)).status == "cancelling"


async def test_rate_limit_keeps_429(service, sim):
    sim.add_fault("groq", {"status": 429})
    err, detail = await cancel_failure(service, new_id())
    assert (err.code(), detail.status_code, detail.error.code) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "rate_limit_exceeded",
    )  # fmt: skip


async def test_an_extra_authorization_header_in_any_case_never_replaces_the_key(sandbox, sim):
    extra = {"authorization": "Bearer extra-evil", "X-Api-Key": "extra-evil", "X-Team": "batch-ops",
             "x-client-request-id": "from-config"}  # fmt: skip
    batch = sim.seed("groq", new_id())
    async with running_service(sim_config(GroqSim, sandbox.url, network={"extra_headers": extra})) as (_, stub):
        response = await cancel(stub, batch.id)
    assert response.status == "cancelling"
    (call,) = sim.calls("groq")
    auth = [value for name, value in call["headers"].items() if name.lower() == "authorization"]
    assert auth == [f"Bearer {KEY}"]
    assert "extra-evil" not in str(call["headers"]) and call["headers"]["X-Team"] == "batch-ops"
    # Groq takes no request id from the gateway (tests/integration/test_provider_contract.py), so an
    # operator's own header of that name goes as configured, once.
    request_ids = [value for name, value in call["headers"].items() if name.lower() == "x-client-request-id"]
    assert request_ids == ["from-config"]


async def test_keys_are_tried_highest_weight_first(sandbox, sim):
    keys = [{"name": "light", "value": "gsk_wrong_light_key_000", "use_for_batch_api": True, "weight": 1},
            {"name": "heavy", "value": KEY, "use_for_batch_api": True, "weight": 5}]  # fmt: skip
    batch = sim.seed("groq", new_id())
    async with running_service(sim_config(GroqSim, sandbox.url, keys=keys)) as (_, stub):
        await cancel(stub, batch.id)
    assert [c["headers"]["Authorization"] for c in sim.calls("groq")] == [f"Bearer {KEY}"]  # no failover needed


@pytest.mark.parametrize(("status", "calls"), [(501, 1), (505, 1), (500, 3), (507, 3), (529, 3), (408, 3)])
async def test_retried_statuses_are_408_429_and_5xx_but_501_and_505(sandbox, sim, status, calls):
    """README: 501 Not Implemented and 505 HTTP Version Not Supported are final (a retry repeats them)."""
    batch = sim.seed("groq", new_id(), status="completed")  # a retry that gets through answers 409
    sim.add_fault("groq", [{"status": status}] * calls)
    net = {"retry_backoff_initial_ms": 1, "retry_backoff_max_ms": 1}
    async with running_service(sim_config(GroqSim, sandbox.url, max_retries=2, network=net)) as (_, stub):
        _, detail = await cancel_failure(stub, batch.id)
    assert detail.status_code == status
    assert len(sim.calls("groq")) == calls
