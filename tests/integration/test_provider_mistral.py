"""Mistral over real gRPC (grpc.aio on loopback) against the Mistral simulator over real HTTP.
The cancel answers the BatchJob itself: no follow-up read."""

from __future__ import annotations

import uuid
from functools import partial

import grpc
import pytest

from sandbox.mistral import MistralSim
from tests import support
from tests.support import running_service, sim_config

SIM = MistralSim  # the `service` fixture (tests/conftest.py) runs batchgate with this simulator

KEY = MistralSim.default_key


def new_id() -> str:
    return str(uuid.uuid4())  # Mistral job ids are UUIDs


def config(sandbox, key: str | None = None, **provider) -> dict:
    return sim_config(MistralSim, sandbox.url, key, **provider)


cancel = partial(support.cancel, provider="mistral")
cancel_failure = partial(support.cancel_failure, provider="mistral")


async def test_cancel_reports_cancellation_requested_with_mistrals_counts(service, sim):
    batch = sim.seed("mistral", new_id(), request_counts={"total": 50, "completed": 20, "failed": 3})
    response = await cancel(service, batch.id)
    assert (response.id, response.object, response.status) == (batch.id, "batch", "cancelling")
    counts = response.request_counts
    # Mistral: completed_requests = succeeded + failed; the simulator's `completed` are the successes.
    assert (counts.total, counts.completed, counts.failed, counts.succeeded) == (50, 20, 3, 20)
    assert not counts.HasField("canceled") and not counts.HasField("pending")
    assert not response.HasField("cancelling_at") and not response.HasField("cancelled_at")
    assert sim.batch("mistral", batch.id).status == "cancelling"
    assert (response.extra_fields.provider, response.extra_fields.request_type) == ("mistral", "batch_cancel")


async def test_cancel_is_a_bearer_post_with_the_configured_key_only(service, sim):
    batch = sim.seed("mistral", new_id())
    await cancel(service, batch.id, metadata=(("authorization", "Bearer caller-secret"),))
    (call,) = sim.calls("mistral")
    assert (call["method"], call["path"], call["body"]) == ("POST", f"/mistral/v1/batch/jobs/{batch.id}/cancel", "")
    assert call["headers"]["Authorization"] == f"Bearer {KEY}"
    assert "caller-secret" not in str(call["headers"])


async def test_immediate_cancel_reports_cancelled_at_the_jobs_end(service, sim, monkeypatch):
    monkeypatch.setattr(MistralSim, "cancel_immediately", True)
    batch = sim.seed("mistral", new_id())
    response = await cancel(service, batch.id)
    state = sim.batch("mistral", batch.id)
    assert (response.status, state.status) == ("cancelled", "cancelled")
    assert response.cancelled_at == state.cancelled_at
    assert not response.HasField("cancelling_at")


async def test_second_cancel_while_cancellation_is_requested_answers_the_job(service, sim):
    batch = sim.seed("mistral", new_id(), status="cancelling", cancel_delay_s=3600)
    assert (await cancel(service, batch.id)).status == "cancelling"


@pytest.mark.parametrize(("status", "wire"), [("completed", "SUCCESS"), ("cancelled", "CANCELLED"),
                                              ("expired", "TIMEOUT_EXCEEDED")])  # fmt: skip
async def test_finished_job_keeps_mistrals_400_and_message(service, sim, status, wire):
    batch = sim.seed("mistral", new_id(), status=status)
    err, detail = await cancel_failure(service, batch.id)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (detail.status_code, detail.is_bifrost_error) == (400, False)
    assert detail.error.message == f"Batch job {batch.id} is {wire} and cannot be cancelled"
    assert detail.extra_fields.provider == "mistral"
    assert len(sim.calls("mistral")) == 1


async def test_unknown_job_is_not_found(service, sim):
    err, detail = await cancel_failure(service, new_id())
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (detail.status_code, detail.error.message) == (404, "Batch job not found")


async def test_id_that_is_not_a_uuid_gets_the_validation_error(service, sim):
    err, detail = await cancel_failure(service, "batch_abc")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (detail.status_code, detail.error.param) == (422, "job_id")
    assert detail.error.message.startswith("path.job_id: Input should be a valid UUID")


async def test_bad_credentials_are_unauthenticated(sandbox, sim):
    async with running_service(config(sandbox, key="wrong-mistral-key-0000")) as (_, stub):
        err, detail = await cancel_failure(stub, new_id())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (detail.status_code, detail.error.message) == (401, "Unauthorized")
    assert "wrong-mistral-key-0000" not in str(detail)


async def test_rate_limit_keeps_429(service, sim):
    sim.add_fault("mistral", {"status": 429, "retry_after": 1})
    err, detail = await cancel_failure(service, new_id())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (detail.status_code, detail.error.message) == (429, "Requests rate limit exceeded")


async def test_raw_response_is_mistrals_job_without_the_key(sandbox, sim):
    batch = sim.seed("mistral", new_id())
    async with running_service(config(sandbox, send_back_raw_response=True)) as (_, stub):
        response = await cancel(stub, batch.id)
    raw = response.extra_fields.raw_response.struct_value
    assert (raw["id"], raw["status"], raw["object"]) == (batch.id, "CANCELLATION_REQUESTED", "batch")
    assert KEY not in str(response)
