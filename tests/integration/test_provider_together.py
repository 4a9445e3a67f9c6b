"""Together over real gRPC (grpc.aio on loopback) against the Together simulator over real HTTP.
The cancel answers the BatchJob, already CANCELLED; Together reports no request counts."""

from __future__ import annotations

import json
import uuid
from functools import partial

import grpc
import pytest

from sandbox.together import TogetherSim
from tests import support
from tests.support import running_service, sim_config

SIM = TogetherSim  # the `service` fixture (tests/conftest.py) runs batchgate with this simulator

KEY = TogetherSim.default_key


def new_id() -> str:
    return str(uuid.uuid4())


def config(sandbox, key: str | None = None, **provider) -> dict:
    return sim_config(TogetherSim, sandbox.url, key, **provider)


cancel = partial(support.cancel, provider="together")
cancel_failure = partial(support.cancel_failure, provider="together")


async def test_cancel_goes_straight_to_cancelled_without_counts(service, sim):
    batch = sim.seed("together", new_id(), request_counts={"total": 40, "completed": 10, "failed": 2})
    response = await cancel(service, batch.id)
    state = sim.batch("together", batch.id)
    assert (response.id, response.status, state.status) == (batch.id, "cancelled", "cancelled")
    assert response.cancelled_at == state.cancelled_at
    assert not response.HasField("cancelling_at")
    assert not response.HasField("request_counts")  # only `progress` exists: never turned into numbers
    assert response.extra_fields.provider == "together"


async def test_cancel_is_a_bearer_post_with_the_configured_key_only(service, sim):
    batch = sim.seed("together", new_id())
    await cancel(service, batch.id, metadata=(("authorization", "Bearer caller-secret"),))
    (call,) = sim.calls("together")
    assert (call["method"], call["path"]) == ("POST", f"/together/v1/batches/{batch.id}/cancel")
    assert call["headers"]["Authorization"] == f"Bearer {KEY}" and "caller-secret" not in str(call["headers"])


@pytest.mark.parametrize(("status", "wire"), [("completed", "COMPLETED"), ("cancelled", "CANCELLED"),
                                              ("failed", "FAILED")])  # fmt: skip
async def test_finished_job_keeps_togethers_400_and_message(service, sim, status, wire):
    batch = sim.seed("together", new_id(), status=status)
    err, detail = await cancel_failure(service, batch.id)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (detail.status_code, detail.is_bifrost_error) == (400, False)
    assert detail.error.message == f"cannot cancel batch job {batch.id} with status {wire}"


async def test_unknown_job_is_not_found(service, sim):
    batch_id = new_id()
    err, detail = await cancel_failure(service, batch_id)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (detail.status_code, detail.error.message) == (404, f"batch job {batch_id} not found")


async def test_bad_credentials_are_unauthenticated(sandbox, sim):
    async with running_service(config(sandbox, key="wrong-together-key-00")) as (_, stub):
        err, detail = await cancel_failure(stub, new_id())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert detail.status_code == 401 and detail.error.message.startswith("Invalid API key provided.")
    assert (detail.error.code, detail.error.type) == ("invalid_api_key", "invalid_request_error")


@pytest.mark.parametrize(("fault", "status", "code"), [({"status": 429}, 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
                                                        ({"status": 500}, 500, grpc.StatusCode.INTERNAL)])  # fmt: skip
async def test_rate_limit_and_server_errors_keep_their_status(service, sim, fault, status, code):
    sim.add_fault("together", fault)
    err, detail = await cancel_failure(service, new_id())
    assert (err.code(), detail.status_code) == (code, status)


async def test_raw_response_is_togethers_job(sandbox, sim):
    batch = sim.seed("together", new_id())
    async with running_service(config(sandbox, send_back_raw_response=True)) as (_, stub):
        response = await cancel(stub, batch.id)
    raw = response.extra_fields.raw_response.struct_value
    assert (raw["id"], raw["status"]) == (batch.id, "CANCELLED") and "progress" in raw
    assert KEY not in str(response)


async def test_cancel_answer_still_in_progress_is_reported_as_cancelling(service, sim):
    """Together's own cancel example answers `"status": "IN_PROGRESS"`: the cancel was accepted, so the
    batch is cancelling (one rule for every provider, in the use case)."""
    batch_id = new_id()
    answer = {"id": batch_id, "status": "IN_PROGRESS", "progress": 40, "created_at": "2026-03-04T05:06:07Z"}
    sim.add_fault("together", {"status": 200, "body": json.dumps(answer)})
    response = await cancel(service, batch_id)
    assert (response.id, response.status) == (batch_id, "cancelling")
    assert not response.HasField("cancelled_at")
