"""xAI over real gRPC (grpc.aio on loopback) against the xAI simulator over real HTTP. The cancel
answers the Batch itself; its status is derived from the request tallies and `cancel_time`."""

from __future__ import annotations

import uuid
from functools import partial

import grpc
import pytest

from sandbox.xai import XAISim
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from tests import support
from tests.support import batch_keys, running_service, sim_config

SIM = XAISim  # the `service` fixture (tests/conftest.py) runs batchgate with this simulator

KEY = XAISim.default_key


def new_id() -> str:
    return f"batch_{uuid.uuid4()}"


def config(sandbox, *keys: str) -> dict:
    """The simulator's block; with `keys`, those keys in order instead of its own."""
    return sim_config(XAISim, sandbox.url, **({"keys": batch_keys(*keys)} if keys else {}))


cancel = partial(support.cancel, provider="xai")
cancel_failure = partial(support.cancel_failure, provider="xai")


def counts_of(response: pb.BatchCancelResponse) -> tuple:
    c = response.request_counts
    return c.total, c.completed, c.failed, c.succeeded, c.canceled, c.pending


async def test_cancel_with_pending_requests_is_cancelling_with_all_tallies(service, sim):
    batch = sim.seed("xai", new_id(), request_counts={"total": 100, "completed": 70, "failed": 5}, cancel_delay_s=3600)
    response = await cancel(service, batch.id)
    state = sim.batch("xai", batch.id)
    assert (response.id, response.status) == (batch.id, "cancelling")
    assert counts_of(response) == (100, 70, 5, 70, 0, 25)
    assert response.cancelling_at == state.cancelling_at and not response.HasField("cancelled_at")


async def test_cancel_that_takes_effect_at_once_is_cancelled(service, sim, monkeypatch):
    monkeypatch.setattr(XAISim, "cancel_immediately", True)
    batch = sim.seed("xai", new_id(), request_counts={"total": 10, "completed": 4, "failed": 1})
    response = await cancel(service, batch.id)
    state = sim.batch("xai", batch.id)
    assert response.status == "cancelled" and counts_of(response) == (10, 4, 1, 4, 5, 0)
    assert response.cancelling_at == response.cancelled_at == state.cancelling_at


async def test_cancel_uses_the_colon_method_with_the_configured_key(service, sim):
    batch = sim.seed("xai", new_id())
    await cancel(service, batch.id, metadata=(("authorization", "Bearer caller-secret"),))
    (call,) = sim.calls("xai")
    assert (call["method"], call["path"]) == ("POST", f"/xai/v1/batches/{batch.id}:cancel")
    assert call["headers"]["Authorization"] == f"Bearer {KEY}" and "caller-secret" not in str(call["headers"])


async def test_finished_batch_is_a_conflict(service, sim):
    batch = sim.seed("xai", new_id(), status="completed")
    err, detail = await cancel_failure(service, batch.id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert (detail.status_code, detail.error.message) == (409, f"Batch {batch.id} has already finished")
    assert detail.error.code == "The system is not in a state required for the operation's execution"


async def test_finished_batch_answered_unchanged_reads_completed(service, sim, monkeypatch):
    monkeypatch.setattr(XAISim, "reject_finished_cancel", False)
    batch = sim.seed("xai", new_id(), status="completed", request_counts={"total": 8, "completed": 6, "failed": 2})
    response = await cancel(service, batch.id)
    assert (response.status, counts_of(response)) == ("completed", (8, 6, 2, 6, 0, 0))
    assert not response.HasField("cancelling_at")


async def test_unknown_batch_is_not_found(service, sim):
    batch_id = new_id()
    err, detail = await cancel_failure(service, batch_id)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert (detail.status_code, detail.error.message) == (404, f"Batch {batch_id} not found")


async def test_incorrect_key_is_unauthenticated(sandbox, sim):
    async with running_service(config(sandbox, "xai-revoked-key-0000")) as (_, stub):
        err, detail = await cancel_failure(stub, new_id())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    assert detail.status_code == 401
    assert detail.error.message.startswith("Incorrect API key provided: xa***00.")
    assert "xai-revoked-key-0000" not in str(detail)


async def test_after_an_incorrect_key_the_next_key_is_tried(sandbox, sim):
    batch = sim.seed("xai", new_id())
    async with running_service(config(sandbox, "xai-revoked-key-0000", KEY)) as (_, stub):
        assert (await cancel(stub, batch.id)).status == "cancelling"
    assert [c["headers"]["Authorization"] for c in sim.calls("xai")] == [
        "Bearer xai-revoked-key-0000", f"Bearer {KEY}",
    ]  # fmt: skip


async def test_rate_limit_keeps_429(service, sim):
    sim.add_fault("xai", {"status": 429})
    err, detail = await cancel_failure(service, new_id())
    assert (err.code(), detail.status_code, detail.error.code) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED, 429, "Some resource has been exhausted",
    )  # fmt: skip


# xAI's batch.proto: `Batch.state` is "not always populated". The cancel was accepted all the same.
@pytest.mark.parametrize(
    ("body", "cancelling_at"),
    [
        ('{"batch_id": "{id}", "name": "nightly", "cancel_time": "2026-03-04T05:06:07.5Z"}', 1772600767),
        ('{"batch_id": "{id}", "cancel_time": "2026-03-04T05:06:07Z", "state": null}', 1772600767),
        ("{}", None),
        ("", None),
    ],
)
async def test_cancel_answer_without_tallies_is_cancelling_not_a_502(service, sim, body, cancelling_at):
    batch_id = new_id()
    sim.add_fault("xai", {"status": 200, "body": body.replace("{id}", batch_id)})
    response = await cancel(service, batch_id)
    assert (response.id, response.status) == (batch_id, "cancelling")
    assert not response.HasField("request_counts") and not response.HasField("cancelled_at")
    if cancelling_at is None:
        assert not response.HasField("cancelling_at")
    else:
        assert response.cancelling_at == cancelling_at
