"""Cohere over real gRPC (grpc.aio on loopback) against the Cohere simulator over real HTTP.
The cancel answers `{}`: the state comes from a follow-up GET within the same deadline."""

from __future__ import annotations

import json
import uuid
from functools import partial

import grpc
import pytest

from sandbox.cohere import CohereSim
from tests import support
from tests.support import running_service, sim_config

SIM = CohereSim  # the `service` fixture (tests/conftest.py) runs batchgate with this simulator

KEY = CohereSim.default_key


def new_id() -> str:
    return str(uuid.uuid4())


def config(sandbox, key: str | None = None, **provider) -> dict:
    return sim_config(CohereSim, sandbox.url, key, **provider)


cancel = partial(support.cancel, provider="cohere")
cancel_failure = partial(support.cancel_failure, provider="cohere")


async def test_cancel_then_read_reports_canceling_with_counts(service, sim):
    batch = sim.seed("cohere", new_id(), request_counts={"total": 500, "completed": 180, "failed": 12},
                     cancel_delay_s=3600)  # fmt: skip
    response = await cancel(service, batch.id)
    assert (response.id, response.status) == (batch.id, "cancelling")
    c = response.request_counts
    assert (c.total, c.completed, c.failed, c.succeeded) == (500, 180, 12, 180)
    assert not c.HasField("pending") and not c.HasField("canceled")
    assert not response.HasField("cancelling_at") and not response.HasField("cancelled_at")
    assert not response.extra_fields.HasField("warning")


async def test_read_after_a_cancel_that_took_effect_reads_canceled(service, sim):
    batch = sim.seed("cohere", new_id(), cancel_delay_s=0)
    assert (await cancel(service, batch.id)).status == "cancelled"
    assert sim.batch("cohere", batch.id).status == "cancelled"


async def test_cancel_posts_the_colon_method_then_gets_the_batch(service, sim):
    batch = sim.seed("cohere", new_id())
    await cancel(service, batch.id, metadata=(("authorization", "Bearer caller-secret"),))
    post, get = sim.calls("cohere")
    assert (post["method"], post["path"]) == ("POST", f"/cohere/v2/batches/{batch.id}:cancel")
    assert (get["method"], get["path"]) == ("GET", f"/cohere/v2/batches/{batch.id}")
    for call in (post, get):
        assert call["headers"]["Authorization"] == f"Bearer {KEY}" and "caller-secret" not in str(call["headers"])


async def test_finished_batch_keeps_cohere_400_and_message(service, sim):
    batch = sim.seed("cohere", new_id(), status="completed")
    err, detail = await cancel_failure(service, batch.id)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (detail.status_code, detail.error.message) == (
        400, f"batch {batch.id} is BATCH_STATUS_COMPLETED and cannot be canceled",
    )  # fmt: skip
    assert len(sim.calls("cohere")) == 1


async def test_unknown_batch_is_not_found(service, sim):
    batch_id = new_id()
    err, detail = await cancel_failure(service, batch_id)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (detail.status_code, detail.error.message) == (404, f"batch {batch_id} not found")


async def test_bad_credentials_are_unauthenticated(sandbox, sim):
    async with running_service(config(sandbox, key="wrong-cohere-key-000")) as (_, stub):
        err, detail = await cancel_failure(stub, new_id())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert (detail.status_code, detail.error.message) == (401, "invalid api token")


async def test_rate_limit_keeps_429(service, sim):
    sim.add_fault("cohere", {"status": 429})
    err, detail = await cancel_failure(service, new_id())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert (detail.status_code, detail.error.message) == (
        429, "You are using a Trial key, which is limited to 10 API calls / minute.",
    )  # fmt: skip


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 429}, {"html": True}, {"malformed": True}])
async def test_failed_follow_up_read_still_reports_the_accepted_cancel(sandbox, sim, fault):
    batch = sim.seed("cohere", new_id(), cancel_delay_s=3600)
    sim.add_fault("cohere", [{"latency_ms": 1}, fault])  # the cancel goes through, the read fails
    async with running_service(config(sandbox, send_back_raw_response=True)) as (_, stub):
        response = await cancel(stub, batch.id)
    assert (response.id, response.status) == (batch.id, "cancelling")
    assert response.extra_fields.warning.startswith("cancel accepted; reading the batch state afterwards failed")
    assert not response.HasField("request_counts")
    assert dict(response.extra_fields.raw_response.struct_value) == {"cancel": {}}
    assert sim.batch("cohere", batch.id).status == "cancelling"


async def test_follow_up_read_still_in_progress_is_reported_as_cancelling(service, sim):
    """Cohere accepted the cancel but its read still says IN_PROGRESS: the answer is cancelling."""
    batch = sim.seed("cohere", new_id())
    running = {"batch": {"id": batch.id, "status": "BATCH_STATUS_IN_PROGRESS", "num_records": 10}}
    # The cancel goes through; the read after it answers the running batch.
    sim.add_fault("cohere", [{"latency_ms": 1}, {"status": 200, "body": json.dumps(running)}])
    response = await cancel(service, batch.id)
    assert (response.status, response.request_counts.total) == ("cancelling", 10)
    assert sim.batch("cohere", batch.id).status == "cancelling"
    assert [c["method"] for c in sim.calls("cohere")] == ["POST", "GET"]
