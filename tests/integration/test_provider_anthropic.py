"""Anthropic over real gRPC (grpc.aio on loopback) against the Anthropic simulator over real HTTP.
The cancel answers the message_batch itself: no follow-up read, so a failed read cannot happen."""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial

import grpc
import pytest

from sandbox.anthropic import AnthropicSim, anthropic_options, message_batch_counts
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from tests import support
from tests.support import error_detail, running_service, sim_config

SIM = AnthropicSim  # the `service` fixture (tests/conftest.py) runs batchgate with this simulator

KEY = AnthropicSim.default_key


def new_id() -> str:
    return f"msgbatch_{uuid.uuid4().hex[:20]}"


def config(sandbox, max_retries: int = 0, **network) -> dict:
    return sim_config(AnthropicSim, sandbox.url, max_retries=max_retries, network=network)


cancel = partial(support.cancel, provider="anthropic")
cancel_error = partial(support.cancel_error, provider="anthropic")


def counts_of(response: pb.BatchCancelResponse) -> dict:
    c = response.request_counts
    return {name: getattr(c, name) for name in ("total", "completed", "failed", "succeeded", "expired", "canceled",
                                                "pending")}  # fmt: skip


async def test_cancel_reports_cancelling_with_all_counts_pending_and_the_cancel_time(service, sim):
    batch = sim.seed("anthropic", new_id(), request_counts={"total": 80, "completed": 30, "failed": 2})
    response = await cancel(service, batch.id)
    state = sim.batch("anthropic", batch.id)
    assert (response.id, response.object, response.status) == (batch.id, "batch", "cancelling")
    tallies = message_batch_counts(state)
    assert tallies["processing"] == 80  # Anthropic keeps everything in processing until the batch ends
    assert counts_of(response) == {
        "total": 80, "completed": 0, "failed": 0, "succeeded": 0, "expired": 0, "canceled": 0, "pending": 80,
    }  # fmt: skip
    assert response.cancelling_at == state.cancelling_at
    assert not response.HasField("cancelled_at")
    assert (response.extra_fields.provider, response.extra_fields.request_type) == ("anthropic", "batch_cancel")
    assert not response.extra_fields.HasField("warning")
    assert not response.extra_fields.HasField("raw_response")


async def test_cancel_is_a_bodiless_post_with_the_configured_key_and_version(service, sim):
    batch = sim.seed("anthropic", new_id())
    await cancel(service, batch.id, metadata=(("x-api-key", "caller-secret"), ("authorization", "Bearer caller")))
    (call,) = sim.calls("anthropic")
    assert (call["method"], call["path"], call["body"]) == (
        "POST", f"/anthropic/v1/messages/batches/{batch.id}/cancel", "",
    )  # fmt: skip
    assert call["headers"]["x-api-key"] == KEY
    assert call["headers"]["anthropic-version"] == "2026-10-21"  # README: providers.anthropic.api_version's default
    assert "Authorization" not in call["headers"] and "caller" not in str(call["headers"])


async def test_second_cancel_of_a_canceling_batch_answers_its_state(service, sim):
    started = int(time.time()) - 5
    batch = sim.seed("anthropic", new_id(), status="cancelling", cancelling_at=started, cancel_delay_s=3600)
    response = await cancel(service, batch.id)
    assert (response.status, response.cancelling_at) == ("cancelling", started)


@pytest.mark.parametrize("finished", ["completed", "expired", "cancelled"])
@pytest.mark.parametrize(("status", "code"), [(400, grpc.StatusCode.INVALID_ARGUMENT),
                                              (409, grpc.StatusCode.FAILED_PRECONDITION)])  # fmt: skip
async def test_ended_batch_keeps_anthropics_status_and_message(service, sim, finished, status, code):
    options = anthropic_options(sim)
    options.ended_cancel_status = status
    try:
        batch = sim.seed("anthropic", new_id(), status=finished)
        err = await cancel_error(service, batch.id)
    finally:
        options.ended_cancel_status = 400
    assert err.code() == code
    detail = error_detail(err)
    assert (detail.status_code, detail.is_bifrost_error) == (status, False)
    assert detail.error.type == "invalid_request_error"
    assert detail.error.message == f"Message Batch {batch.id} has already ended and can no longer be canceled."
    assert detail.extra_fields.provider == "anthropic"
    assert len(sim.calls("anthropic")) == 1
    assert sim.batch("anthropic", batch.id).status == finished


async def test_batch_that_ended_after_the_cancel_is_refused_like_any_ended_batch(service, sim):
    batch = sim.seed("anthropic", new_id(), cancel_delay_s=0.05)
    assert (await cancel(service, batch.id)).status == "cancelling"
    await asyncio.sleep(0.06)
    state = sim.batch("anthropic", batch.id)
    assert state.status == "cancelled" and message_batch_counts(state)["canceled"] == 90
    assert error_detail(await cancel_error(service, batch.id)).status_code == 400


async def test_unknown_batch_is_not_found(service, sim):
    err = await cancel_error(service, new_id())
    assert err.code() == grpc.StatusCode.NOT_FOUND
    detail = error_detail(err)
    assert (detail.status_code, detail.error.type) == (404, "not_found_error")


async def test_bad_key_is_unauthenticated_and_never_echoed(sandbox, sim):
    wrong = "sk-ant-api03-WRONGsecret-4242"
    cfg = config(sandbox)
    cfg["providers"]["anthropic"]["keys"][0]["value"] = wrong
    async with running_service(cfg) as (_, stub):
        err = await cancel_error(stub, sim.seed("anthropic", new_id()).id)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    detail = error_detail(err)
    assert (detail.status_code, detail.error.type, detail.error.message) == (
        401, "authentication_error", "invalid x-api-key",
    )  # fmt: skip
    assert wrong not in str(detail) and wrong not in err.details()


async def test_next_key_is_tried_after_a_refused_one(sandbox, sim):
    cfg = config(sandbox)
    cfg["providers"]["anthropic"]["keys"].insert(
        0, {"name": "revoked", "value": "sk-ant-api03-revoked-0000", "use_for_batch_api": True}
    )
    batch = sim.seed("anthropic", new_id())
    async with running_service(cfg) as (_, stub):
        assert (await cancel(stub, batch.id)).status == "cancelling"
    assert [c["headers"]["x-api-key"] for c in sim.calls("anthropic")] == ["sk-ant-api03-revoked-0000", KEY]


async def test_rate_limited_keeps_429_and_anthropics_type(service, sim):
    sim.add_fault("anthropic", {"status": 429, "retry_after": 0})
    err = await cancel_error(service, sim.seed("anthropic", new_id()).id)
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    detail = error_detail(err)
    assert (detail.status_code, detail.error.type) == (429, "rate_limit_error")


@pytest.mark.parametrize("status", [429, 500, 529])
async def test_rate_limit_and_overload_are_retried(sandbox, sim, status):
    batch = sim.seed("anthropic", new_id())
    sim.add_fault("anthropic", {"status": status, "retry_after": 0.01})
    async with running_service(config(sandbox, max_retries=2, retry_backoff_initial_ms=1)) as (_, stub):
        assert (await cancel(stub, batch.id)).status == "cancelling"
    assert len(sim.calls("anthropic")) == 2


async def test_overloaded_after_retries_keeps_529(sandbox, sim):
    sim.add_fault("anthropic", {"status": 529, "count": 2})
    async with running_service(config(sandbox, max_retries=1, retry_backoff_initial_ms=1)) as (_, stub):
        err = await cancel_error(stub, new_id())
    detail = error_detail(err)
    assert (detail.status_code, detail.error.type) == (529, "overloaded_error")


async def test_malformed_answer_is_an_upstream_failure(service, sim):
    sim.add_fault("anthropic", {"malformed": True})
    err = await cancel_error(service, new_id())
    assert err.code() == grpc.StatusCode.UNAVAILABLE and error_detail(err).status_code == 502


async def test_id_is_escaped_as_one_segment_and_answered_as_sent(service, sim):
    batch = sim.seed("anthropic", "msgbatch:with:colons")
    response = await cancel(service, batch.id)
    assert response.id == "msgbatch:with:colons"
    assert sim.calls("anthropic")[0]["path"] == "/anthropic/v1/messages/batches/msgbatch%3Awith%3Acolons/cancel"


async def test_raw_response_is_the_message_batch_without_the_key(sandbox, sim):
    cfg = config(sandbox)
    cfg["providers"]["anthropic"]["send_back_raw_response"] = True
    batch = sim.seed("anthropic", new_id())
    async with running_service(cfg) as (_, stub):
        response = await cancel(stub, batch.id)
    raw = response.extra_fields.raw_response.struct_value
    assert (raw["type"], raw["id"], raw["processing_status"]) == ("message_batch", batch.id, "canceling")
    assert raw["request_counts"]["processing"] == 100
    assert KEY not in str(response)


async def test_configured_version_header_replaces_the_default(sandbox, sim):
    cfg = config(sandbox, extra_headers={"anthropic-version": "2023-06-01", "anthropic-beta": "x-test"})
    batch = sim.seed("anthropic", new_id())
    async with running_service(cfg) as (_, stub):
        await cancel(stub, batch.id)
    headers = sim.calls("anthropic")[0]["headers"]
    assert (headers["anthropic-version"], headers["anthropic-beta"]) == ("2023-06-01", "x-test")


async def test_the_version_setting_is_sent(sandbox, sim):
    cfg = config(sandbox)
    cfg["providers"]["anthropic"]["api_version"] = "2024-01-01"
    batch = sim.seed("anthropic", new_id())
    async with running_service(cfg) as (_, stub):
        await cancel(stub, batch.id)
    assert sim.calls("anthropic")[0]["headers"]["anthropic-version"] == "2024-01-01"


async def test_the_anthropic_drop_in_passes_the_callers_version_and_the_native_route_does_not(service, sim):
    first, second = sim.seed("anthropic", new_id()), sim.seed("anthropic", new_id())
    caller = (("anthropic-version", "2024-01-01"), ("anthropic-beta", "caller-beta"))
    batch = await service.CancelAnthropic(pb.CancelBatchRequest(batch_id=first.id), metadata=caller)
    assert (batch.id, batch.processing_status) == (first.id, "canceling")
    await cancel(service, second.id, metadata=caller)
    sent = [call["headers"] for call in sim.calls("anthropic")]
    assert [h["anthropic-version"] for h in sent] == ["2024-01-01", "2026-10-21"]
    assert all("anthropic-beta" not in h for h in sent)  # only the version is the caller's to choose


async def test_a_malformed_caller_version_is_refused_before_any_call(service, sim):
    batch = sim.seed("anthropic", new_id())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.CancelAnthropic(pb.CancelBatchRequest(batch_id=batch.id),
                                      metadata=(("anthropic-version", "latest"),))  # fmt: skip
    detail = error_detail(info.value)
    assert (info.value.code(), detail.status_code, detail.error.param) == (
        grpc.StatusCode.INVALID_ARGUMENT, 400, "anthropic-version",
    )  # fmt: skip
    assert sim.calls("anthropic") == []
