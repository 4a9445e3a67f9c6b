"""CancelMany (and Cancel's wait) over real gRPC on loopback against the sandbox over real HTTP:
mixed providers with failing items, duplicates, waiting until cancelled on every provider, the wait
running out, the bound on upstream calls in flight, per-item access checks, and a caller that goes
away. Nothing of batchgate is mocked; reads are made faster by a shorter poll policy."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import grpc
import pytest
from prometheus_client import REGISTRY

from sandbox.server import SIMULATORS, gateway_config
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.infra.providers.catalog import ADAPTERS
from service.usecases.waiting import PollPolicy
from tests.support import config_dict, error_detail, eventually, running_service, settled

# Every simulated provider that can cancel (Fireworks is simulated for reads only).
PROVIDERS = [sim.name for sim in SIMULATORS if sim.name in ADAPTERS]
FAST_POLLS = PollPolicy(first_s=0.2, max_s=0.5)
VK_OPENAI_ONLY = "sk-bf-bulk-openai-only-0001"


def batch_id(provider: str) -> str:
    """An id every simulator takes (Mistral's are UUIDs)."""
    return str(uuid.uuid4()) if provider == "mistral" else f"b{uuid.uuid4().hex[:12]}"


def bulk_config(sandbox_url: str, **client) -> dict:
    config = gateway_config(sandbox_url)  # every simulated provider with its default key...
    config["providers"].update(config_dict(sandbox_url)["providers"])  # ...but the test sandbox's OpenAI/Azure keys
    config["client"].update(client)
    config["governance"] = {
        "rate_limits": [{"id": "three", "request_max_limit": 3, "request_reset_duration": "1h"}],
        "virtual_keys": [
            {
                "id": "openai-only",
                "value": VK_OPENAI_ONLY,
                "rate_limit_id": "three",
                "provider_configs": [{"provider": "openai"}],
            },
        ],
    }
    return config


@pytest.fixture
async def stub(sandbox, sim):
    async with running_service(bulk_config(sandbox.url)) as (app, stub):
        app.live.factory.waiting.policy = FAST_POLLS
        yield stub


def request(items, wait_seconds: int = 0) -> pb.CancelManyRequest:
    return pb.CancelManyRequest(
        batches=[pb.BatchRef(id=batch, provider=provider) for batch, provider in items], wait_seconds=wait_seconds
    )


async def events_of(stub, items, wait_seconds: int = 0, metadata=()) -> list[pb.CancelManyEvent]:
    return [event async for event in stub.CancelMany(request(items, wait_seconds), metadata=metadata)]


def events_at(events, index: int) -> list[pb.CancelManyEvent]:
    return [event for event in events if event.index == index]


def finals(events) -> dict[int, pb.CancelManyEvent]:
    by_index = {}
    for event in events:
        if event.final:
            assert event.index not in by_index, f"two final events for index {event.index}"
            by_index[event.index] = event
    return by_index


async def single_cancel_error(stub, batch: str, provider: str) -> pb.ErrorDetail:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Cancel(pb.CancelBatchRequest(batch_id=batch, provider=provider))
    return error_detail(info.value)


async def test_mixed_providers_with_failing_items_each_answer_like_a_single_cancel(stub, sim):
    ok_openai = sim.seed("openai", batch_id("openai")).id
    ok_anthropic = sim.seed("anthropic", batch_id("anthropic")).id
    done = sim.seed("azure", batch_id("azure"), status="completed").id
    items = [
        (ok_openai, "openai"),
        ("missing-1", "openai"),
        (ok_anthropic, "anthropic"),
        (done, "azure"),
        ("b1", "nosuch"),
        ("../etc", "openai"),
        ("b2", "openrouter"),
        (ok_openai, "OpenAI"),
    ]
    events = await events_of(stub, items)
    assert len(events) == len(items) and all(event.final for event in events)
    by_index = finals(events)
    assert sorted(by_index) == list(range(len(items)))
    for index, (batch, provider) in enumerate(items):
        assert (by_index[index].id, by_index[index].provider) == (batch, provider)
    assert by_index[0].batch.status == "cancelling" and by_index[0].batch.id == ok_openai, by_index[0]
    assert by_index[2].batch.status == "cancelling" and by_index[2].batch.extra_fields.provider == "anthropic"
    assert by_index[7].batch == by_index[0].batch  # the duplicate (provider names are case-blind)
    # Every error is exactly what a single cancel of the same batch fails with.
    sim.seed("azure", done, status="completed")
    for index in (1, 3, 4, 5, 6):
        batch, provider = items[index]
        assert by_index[index].WhichOneof("result") == "error"
        assert by_index[index].error == await single_cancel_error(stub, batch, provider), items[index]
    # ... which is, written out (README, Errors): the providers' own 404 and 409 (OpenAI's without a
    # code, Azure's "409"), batchgate's 400s for an unknown provider, an unsafe id and a provider
    # without batch cancel. (status, is_bifrost_error, type, code, param)
    errors = {i: by_index[i].error for i in (1, 3, 4, 5, 6)}
    assert {
        i: (e.status_code, e.is_bifrost_error, e.error.type, e.error.code, e.error.param) for i, e in errors.items()
    } == {
        1: (404, False, "invalid_request_error", "", ""),
        3: (409, False, "invalid_request_error", "409", ""),
        4: (400, True, "invalid_request_error", "unknown_provider", "provider"),
        5: (400, True, "invalid_request_error", "invalid_request", "batch_id"),
        6: (400, True, "invalid_request_error", "unsupported_operation", ""),
    }
    # The duplicate was cancelled once; the refused items reached no provider.
    assert len([c for c in sim.calls("openai") if ok_openai in c["path"] and c["method"] == "POST"]) == 1
    assert not any("etc" in c["path"] for c in sim.calls())


async def test_waits_until_cancelled_on_every_provider_with_a_line_per_status_change(stub, sim):
    items = [(sim.seed(provider, batch_id(provider), cancel_delay_s=0.3).id, provider) for provider in PROVIDERS]
    events = await events_of(stub, items, wait_seconds=20)
    by_index = finals(events)
    assert sorted(by_index) == list(range(len(items)))
    for index, (batch, provider) in enumerate(items):
        mine = events_at(events, index)
        assert mine[-1].final and all(not event.final for event in mine[:-1]), provider
        final = mine[-1].batch
        assert final.status == "cancelled", (provider, final)
        assert not final.extra_fields.HasField("warning"), provider
        statuses = [event.batch.status for event in mine]
        assert len(statuses) == len(set(statuses)), (provider, statuses)  # only changes are reported
        if len(mine) > 1:  # not cancelled straight away (Together is): waiting read the batch back
            assert [c for c in sim.calls(provider) if c["method"] == "GET" and batch in c["path"]], provider
    waited = {provider for index, (_, provider) in enumerate(items) if not events_at(events, index)[0].final}
    assert waited >= {"openai", "azure", "anthropic", "bedrock", "vertex", "mistral", "groq", "xai"}


async def test_the_wait_running_out_gives_the_last_state_and_a_warning(stub, sim):
    stuck = sim.seed("openai", batch_id("openai"), cancel_delay_s=3600).id
    started = time.monotonic()
    events = await events_of(stub, [(stuck, "openai")], wait_seconds=1)
    assert 1 <= time.monotonic() - started < 10
    assert [(event.final, event.batch.status) for event in events] == [(False, "cancelling"), (True, "cancelling")]
    assert "still cancelling" in events[-1].batch.extra_fields.warning


async def test_single_cancel_waits_too_and_bounds_are_checked_first(stub, sim):
    batch = sim.seed("openai", batch_id("openai"), cancel_delay_s=0.3).id
    answer = await stub.Cancel(pb.CancelBatchRequest(batch_id=batch, provider="openai", wait_seconds=20))
    assert answer.status == "cancelled" and not answer.extra_fields.HasField("warning")
    stuck = sim.seed("openai", batch_id("openai"), cancel_delay_s=3600).id
    answer = await stub.Cancel(pb.CancelBatchRequest(batch_id=stuck, provider="openai", wait_seconds=1))
    assert answer.status == "cancelling" and "still cancelling" in answer.extra_fields.warning
    sim.clear_calls()
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Cancel(pb.CancelBatchRequest(batch_id=batch, provider="openai", wait_seconds=3601))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_detail(info.value).error.param == "wait_seconds"
    assert sim.calls() == []


@pytest.mark.parametrize(
    "items, wait, param",
    [
        ([], 0, "batches"),
        ([("b", "openai")] * 1001, 0, "batches"),
        ([("b", "openai")], 3601, "wait_seconds"),
        ([("b", "openai"), ("", "openai")], 0, "batches[1].id"),
        ([("b", "openai"), ("c", "")], 0, "batches[1].provider"),
    ],
)
async def test_bounds_refuse_the_whole_call_before_any_upstream_call(stub, sim, items, wait, param):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await events_of(stub, items, wait)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(info.value)
    assert (detail.status_code, detail.error.param) == (400, param)
    assert sim.calls() == []


async def test_upstream_calls_in_flight_are_bounded_per_bulk_call(sandbox, sim):
    async with running_service(bulk_config(sandbox.url, bulk_concurrency=3)) as (_, stub):
        items = [(sim.seed("openai", batch_id("openai")).id, "openai") for _ in range(12)]
        sim.add_fault("openai", {"latency_ms": 150, "count": 12})
        events = await events_of(stub, items)
    assert all(event.batch.status == "cancelling" for event in events)
    assert sim.peak_in_flight == 3


async def test_each_item_is_checked_against_the_virtual_keys_scope_and_rate_limit(stub, sim):
    ids = [sim.seed("openai", batch_id("openai")).id for _ in range(4)]
    items = [(ids[0], "openai"), ("b-azure", "azure"), (ids[1], "openai"), (ids[2], "openai"), (ids[3], "openai")]
    events = await events_of(stub, items, metadata=(("x-bf-vk", VK_OPENAI_ONLY),))
    by_index = finals(events)
    assert by_index[1].error.status_code == 403 and by_index[1].error.error.code == "provider_blocked"
    assert [by_index[i].WhichOneof("result") for i in (0, 2, 3)] == ["batch"] * 3
    assert by_index[4].error.status_code == 429 and by_index[4].error.error.code == "rate_limited"
    assert sim.calls("azure") == []
    assert not [c for c in sim.calls("openai") if ids[3] in c["path"]]


async def test_bad_credentials_refuse_the_whole_call(stub, sim):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await events_of(stub, [("b", "openai")], metadata=(("x-bf-vk", "sk-bf-unknown-0000"),))
    assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert error_detail(info.value).error.code == "virtual_key_not_found"


async def test_a_caller_that_goes_away_stops_all_reads(stub, sim):
    stuck = [sim.seed("openai", batch_id("openai"), cancel_delay_s=3600).id for _ in range(3)]
    call = stub.CancelMany(request([(batch, "openai") for batch in stuck], wait_seconds=600))
    first = await call.read()
    assert not first.final
    await eventually(lambda: [c for c in sim.calls("openai") if c["method"] == "GET"])  # reads are under way
    call.cancel()
    # The service ends the call, and with it every item's reads (left alone they would go on for
    # the 600 s wait): once it has, no read can follow.
    await settled()


async def test_one_audit_event_per_item_and_one_access_line_per_call(stub, sim, caplog):
    caplog.set_level(logging.INFO)
    ok = sim.seed("openai", batch_id("openai")).id
    items = [(ok, "openai"), ("missing-2", "openai"), (ok, "openai"), ("b", "nosuch")]
    await events_of(stub, items, metadata=(("x-request-id", "bulk-req-1"),))
    audit = [r.fields for r in caplog.records if r.name == "batchgate.audit"]
    assert sorted((a["request_id"], a["index"], a["result"]) for a in audit) == [
        ("bulk-req-1", 0, "ok"),
        ("bulk-req-1", 1, "NOT_FOUND"),
        ("bulk-req-1", 2, "ok"),
        ("bulk-req-1", 3, "INVALID_ARGUMENT"),
    ]
    (access,) = [r.fields for r in caplog.records if r.name == "batchgate.access"]
    assert access["request_id"] == "bulk-req-1" and access["rpc"] == "CancelMany" and access["items"] == 4
    assert access["item_outcomes"] == {"OK": 2, "NOT_FOUND": 1, "INVALID_ARGUMENT": 1}
    assert (access["outcome"], access["status"]) == ("OK", 200)


async def test_metrics_tell_reads_from_cancel_calls(stub, sim):
    def attempts(operation: str) -> float:
        labels = {"provider": "openai", "operation": operation, "result": "2xx"}
        return REGISTRY.get_sample_value("batchgate_upstream_attempts_total", labels) or 0.0

    before = attempts("cancel"), attempts("read")
    batch = sim.seed("openai", batch_id("openai"), cancel_delay_s=0.3).id
    events = await events_of(stub, [(batch, "openai")], wait_seconds=20)
    assert events[-1].batch.status == "cancelled"
    reads = len([c for c in sim.calls("openai") if c["method"] == "GET"])
    assert reads >= 1
    assert (attempts("cancel"), attempts("read")) == (before[0] + 1, before[1] + reads)


async def test_the_wait_shares_the_calls_deadline(stub, sim):
    stuck = sim.seed("openai", batch_id("openai"), cancel_delay_s=3600).id
    events = [event async for event in stub.CancelMany(request([(stuck, "openai")], wait_seconds=600), timeout=3)]
    assert events[-1].final and events[-1].batch.status == "cancelling"
    assert "still cancelling" in events[-1].batch.extra_fields.warning


async def test_shutdown_ends_waits_with_the_last_state_instead_of_cutting_the_stream(sandbox, sim):
    async with running_service(bulk_config(sandbox.url)) as (app, stub):
        app.live.factory.waiting.policy = FAST_POLLS
        stuck = sim.seed("openai", batch_id("openai"), cancel_delay_s=3600).id
        call = stub.CancelMany(request([(stuck, "openai")], wait_seconds=600))
        events = [await call.read()]
        stopping = asyncio.create_task(app.stop(grace=10))
        while (event := await call.read()) is not grpc.aio.EOF:
            events.append(event)
        assert await call.code() == grpc.StatusCode.OK
        await stopping
    assert [(e.final, e.batch.status) for e in events] == [(False, "cancelling"), (True, "cancelling")]
    assert "shutting down" in events[-1].batch.extra_fields.warning
