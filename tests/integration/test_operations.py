"""Cancel by selector as long-running operations, through the real servicer over real gRPC, with the
real adapters and executors against the simulators over real HTTP (whose recorded calls show what
was and was not sent). Retries and polls are set short through the policy; a takeover is driven by
the second worker's clock (its time is past the dead worker's lease) and every wait is for an event
(`eventually`), never a sleep."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2

from sandbox.anthropic import AnthropicSim
from sandbox.openai import AzureSim, OpenAISim
from service.edge.server import App, OperationsSetup, create_server
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc
from service.infra.operation_store import SqliteOperationStore
from service.infra.providers.catalog import parse_config
from service.infra.timing import Timing
from service.infra.webhook import signature
from service.usecases.operations import Backoff, OperationPolicy
from service.usecases.operations.worker import UNIX_TIME
from service.usecases.waiting import PollPolicy
from tests.support import AZURE_KEY, OPENAI_KEYS, error_detail, eventually

FAST = OperationPolicy(
    retry=Backoff(first_s=0.02, max_s=0.1),
    listing_retry=Backoff(first_s=0.02, max_s=0.1),
    webhook_retry=Backoff(first_s=0.05, max_s=0.1),
    poll=PollPolicy(first_s=0.05, max_s=0.2),
    flush_seconds=0.02,
)
ADMIN = ("authorization", "Basic " + __import__("base64").b64encode(b"admin:hunter2-admin").decode())
VK_OPS, VK_PLAIN, VK_OTHER = "sk-bf-ops-team", "sk-bf-plain-team", "sk-bf-other-team"
NOW = int(time.time())
LEASE_S = 2


def gateway_config(url: str, **operations: Any) -> dict:
    """openai, azure and anthropic at the sandbox; admin credentials (not required on inference) and
    three virtual keys: one that may cancel by selector (openai and azure only), one that may not,
    and another team's that may."""
    providers = {
        "openai": OpenAISim.gateway_config(f"{url}{OpenAISim.prefix}", OPENAI_KEYS[0]),
        "azure": AzureSim.gateway_config(f"{url}{AzureSim.prefix}", AZURE_KEY),
        "anthropic": AnthropicSim.gateway_config(f"{url}{AnthropicSim.prefix}", AnthropicSim.default_key),
    }
    for block in providers.values():
        # A breaker that opens (5 failures in a row) lets a probe through after 0.2 s, not 10.
        block.setdefault("network_config", {}).update({"max_retries": 0, "circuit_breaker": {"open_seconds": 0.2}})
    return {
        "client": {"bulk_concurrency": 4},
        "providers": providers,
        "auth_config": {
            "is_enabled": True,
            "admin_username": "admin",
            "admin_password": "hunter2-admin",
            "disable_auth_on_inference": True,
        },
        "governance": {
            "virtual_keys": [
                {
                    "id": "ops",
                    "value": VK_OPS,
                    "allow_cancel_matching": True,
                    "provider_configs": [{"provider": "openai"}, {"provider": "azure"}],
                },
                {"id": "plain", "value": VK_PLAIN, "provider_configs": [{"provider": "openai"}]},
                {
                    "id": "other",
                    "value": VK_OTHER,
                    "allow_cancel_matching": True,
                    "provider_configs": [{"provider": "openai"}],
                },
            ]
        },
        "operations": {"lease_seconds": LEASE_S, **operations},
    }


class Client:
    def __init__(self, app: App) -> None:
        self.app = app
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        self.batches = batchgate_pb2_grpc.BatchServiceStub(self.channel)
        self.ops = operations_pb2_grpc.OperationsStub(self.channel)

    async def start(self, metadata=(ADMIN,), **fields: Any) -> operations_pb2.Operation:
        selector = fields.pop("selector", {})
        if isinstance(selector, dict):
            selector = dict(selector)
            refs = [pb.BatchRef(id=i, provider=p) for i, p in selector.pop("batches", [])]
            selector = pb.BatchSelector(batches=refs, **selector)
        request = pb.CancelMatchingRequest(selector=selector, **fields)
        return await self.batches.CancelMatching(request, metadata=metadata)

    async def refused(self, metadata=(ADMIN,), **fields: Any) -> tuple[grpc.StatusCode, pb.ErrorDetail]:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await self.start(metadata, **fields)
        return info.value.code(), error_detail(info.value)

    async def wait(self, name: str, metadata=(ADMIN,), seconds: float = 20) -> operations_pb2.Operation:
        request = operations_pb2.WaitOperationRequest(name=name, timeout=duration_pb2.Duration(seconds=int(seconds)))
        op = await self.ops.WaitOperation(request, metadata=metadata, timeout=seconds + 5)
        assert op.done, f"{name} not done after {seconds} s: {meta(op)}"
        return op

    async def get(self, name: str, metadata=(ADMIN,)) -> operations_pb2.Operation:
        return await self.ops.GetOperation(operations_pb2.GetOperationRequest(name=name), metadata=metadata)


def meta(op: operations_pb2.Operation) -> pb.CancelMatchingMetadata:
    metadata = pb.CancelMatchingMetadata()
    assert op.metadata.Unpack(metadata)
    return metadata


def result(op: operations_pb2.Operation) -> dict[str, pb.MatchedBatch]:
    answer = pb.CancelMatchingResult()
    assert op.response.Unpack(answer), op
    return {batch.id: batch for batch in answer.batches}


def cancels(sim, provider: str | None = None) -> list[str]:
    """Paths of the cancel calls the simulator received."""
    return [call["path"] for call in sim.calls(provider) if call["method"] == "POST"]


@contextlib.asynccontextmanager
async def serving(config: dict, store=None, timing: Timing = UNIX_TIME) -> AsyncIterator[Client]:
    setup = OperationsSetup(store=store, policy=FAST, timing=timing)
    app = await create_server(parse_config(config, env={}), operations=setup)
    client = Client(app)
    try:
        yield client
    finally:
        await client.channel.close()
        await app.stop(grace=0)


@pytest.fixture
async def gateway(sandbox, sim) -> AsyncIterator[Client]:
    async with serving(gateway_config(sandbox.url)) as client:
        yield client


def seed(sim, provider: str, batch_id: str, status: str = "in_progress", **fields: Any) -> str:
    fields.setdefault("cancel_delay_s", 3600)
    sim.seed(provider, batch_id, status=status, **fields)
    return batch_id


# --- explicit batches ---------------------------------------------------------------------------


async def test_named_batches_are_cancelled_and_reported_each(gateway, sim):
    running = [seed(sim, "openai", f"batch_run_{i}") for i in range(3)]
    ended = seed(sim, "openai", "batch_done", status="completed")
    azure = seed(sim, "azure", "batch_az")
    named = [(i, "openai") for i in running] + [(ended, "openai"), ("missing_x", "openai"), (azure, "azure")]
    started = await gateway.start(selector={"batches": named})
    assert started.name.startswith("operations/") and not started.done
    assert meta(started).created_by == "admin"
    op = await gateway.wait(started.name)
    batches = result(op)
    assert {i: b.outcome for i, b in batches.items()} == {
        **{i: "cancelled" for i in running},
        ended: "already_ended",
        "missing_x": "failed",
        azure: "cancelled",
    }
    assert batches["missing_x"].error.status_code == 404
    assert batches[running[0]].batch.status == "cancelling" and batches[running[0]].key_id == "sandbox"
    counts = meta(op)
    assert (counts.matched, counts.cancel_accepted, counts.already_ended, counts.failed, counts.pending) == (
        6,
        4,
        1,
        1,
        0,
    )
    assert counts.state == "done"
    assert sorted(cancels(sim)) == sorted(
        [f"/openai/v1/batches/{i}/cancel" for i in [*running, ended, "missing_x"]]
        + [f"/azure/openai/batches/{azure}/cancel"]
    )


async def test_a_dry_run_of_named_batches_sends_nothing(gateway, sim):
    seed(sim, "openai", "batch_dry")
    op = await gateway.wait(
        (await gateway.start(selector={"batches": [("batch_dry", "openai")]}, validate_only=True)).name
    )
    assert result(op)["batch_dry"].outcome == "matched"
    assert sim.calls() == []


# --- selectors --------------------------------------------------------------------------------


def seed_mix(sim) -> dict[str, str]:
    """Batches of two providers in several states, ages and teams; returns id -> what it is."""
    kinds = {
        seed(sim, "openai", "oa_search_1", metadata={"team": "search"}, created_at=NOW - 600): "match",
        seed(
            sim, "openai", "oa_search_2", status="validating", metadata={"team": "search"}, created_at=NOW - 60
        ): "match",
        seed(sim, "openai", "oa_ads", metadata={"team": "ads"}, created_at=NOW - 600): "other team",
        seed(sim, "openai", "oa_nometa", created_at=NOW - 600): "no metadata",
        seed(sim, "openai", "oa_done", status="completed", metadata={"team": "search"}, created_at=NOW - 600): "ended",
        seed(sim, "openai", "oa_old", metadata={"team": "search"}, created_at=NOW - 9 * 86400): "too old",
        seed(sim, "azure", "az_search", metadata={"team": "search"}, created_at=NOW - 600): "match",
        seed(sim, "anthropic", "msgbatch_search", created_at=NOW - 600): "not selected",
    }
    return kinds


async def test_a_dry_run_lists_and_reports_what_matches_and_cancels_nothing(gateway, sim):
    kinds = seed_mix(sim)
    started = await gateway.start(
        selector={"metadata": {"team": "search"}, "created_after": NOW - 86400, "providers": ["openai", "azure"]},
        validate_only=True,
    )
    op = await gateway.wait(started.name)
    batches = result(op)
    assert set(batches) == {i for i, kind in kinds.items() if kind == "match"}
    assert {b.outcome for b in batches.values()} == {"matched"}
    assert batches["oa_search_2"].batch.status == "validating" and batches["az_search"].provider == "azure"
    assert meta(op).matched == 3 and meta(op).validate_only
    assert cancels(sim) == []
    assert {call["method"] for call in sim.calls()} == {"GET"}


async def test_exactly_the_matching_batches_are_cancelled(gateway, sim):
    kinds = seed_mix(sim)
    started = await gateway.start(
        selector={"metadata": {"team": "search"}, "created_after": NOW - 86400, "providers": ["openai", "azure"]}
    )
    op = await gateway.wait(started.name)
    expected = {i for i, kind in kinds.items() if kind == "match"}
    assert {i: b.outcome for i, b in result(op).items()} == dict.fromkeys(expected, "cancelled")
    assert sorted(path.split("/")[-2] for path in cancels(sim)) == sorted(expected)
    for batch_id, kind in kinds.items():
        provider = "azure" if batch_id.startswith("az") else "anthropic" if batch_id.startswith("msg") else "openai"
        status = sim.batch(provider, batch_id).status
        assert (status == "cancelling") == (kind == "match"), (batch_id, kind, status)


async def test_more_matches_than_max_batches_refuses_and_cancels_nothing(gateway, sim):
    for i in range(5):
        seed(sim, "openai", f"batch_cap_{i}")
    op = await gateway.wait((await gateway.start(selector={"providers": ["openai"]}, max_batches=3)).name)
    assert op.error.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
    assert op.error.message == "matches 5 batches, more than max_batches 3; nothing was cancelled"
    assert meta(op).matched == 5
    assert cancels(sim) == []


async def test_an_empty_provider_list_means_the_callers_own_providers(gateway, sim):
    seed(sim, "openai", "oa_1")
    seed(sim, "anthropic", "msgbatch_1")
    op = await gateway.wait((await gateway.start(metadata=(("x-bf-vk", VK_OPS),), selector={})).name)
    assert set(result(op)) == {"oa_1"}  # anthropic is not among the key's providers
    assert meta(op).created_by == "ops"
    assert not [call for call in sim.calls("anthropic")]


# --- bad input, access ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"selector": {"providers": ["nope"]}}, "unknown provider: nope"),
        ({"selector": {"statuses": ["running"]}}, "unknown status: running"),
        ({"selector": {"providers": ["openai"], "batches": [("b", "openai")]}}, "selector.batches names"),
        ({"max_batches": 100_001}, "max_batches must be at most 100000"),
        ({"deadline_seconds": 86_401}, "deadline_seconds must be at most 86400"),
        ({"selector": {"created_after": NOW, "created_before": NOW}}, "created_after must be before created_before"),
        ({"selector": {"metadata": {"team": ""}}}, "selector.metadata['team'] must be 1 to 512 characters"),
        ({"selector": {"metadata": {"k" * 65: "v"}}}, "selector.metadata keys must be 1 to 64 characters"),
        ({"notify": pb.Notify(url="https://example.com/hook")}, "notify.url must start with one of"),
        (
            {"selector": {"batches": [(f"b{i}", "openai") for i in range(1001)]}},
            "selector.batches holds 1001 batches, more than 1000",
        ),
        ({"selector": {"batches": [("a/../b", "openai")]}}, "selector.batches[0].id: batch_id contains"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_listed(gateway, sim, fields, message):
    code, detail = await gateway.refused(**fields)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert detail.status_code == 400 and detail.error.message.startswith(message), detail.error.message
    assert sim.calls() == []


async def test_who_may_cancel_by_selector(gateway, sim):
    seed(sim, "openai", "oa_1")
    code, detail = await gateway.refused(metadata=(("x-bf-vk", VK_PLAIN),), selector={"providers": ["openai"]})
    assert code == grpc.StatusCode.PERMISSION_DENIED and detail.error.code == "cancel_matching_not_allowed"
    code, _ = await gateway.refused(metadata=(), selector={"providers": ["openai"]})  # anonymous
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, detail = await gateway.refused(metadata=(("x-bf-vk", VK_OPS),), selector={"providers": ["anthropic"]})
    assert code == grpc.StatusCode.PERMISSION_DENIED and detail.error.code == "provider_blocked"
    code, _ = await gateway.refused(metadata=(("x-bf-vk", "sk-bf-unknown"),), selector={})
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert sim.calls() == []
    # Named batches need only the normal permission.
    op = await gateway.start(metadata=(("x-bf-vk", VK_PLAIN),), selector={"batches": [("oa_1", "openai")]})
    assert result(await gateway.wait(op.name, metadata=(("x-bf-vk", VK_PLAIN),)))["oa_1"].outcome == "cancelled"


async def test_an_operation_is_visible_only_to_its_creator_and_admin(gateway, sim):
    mine = (("x-bf-vk", VK_OPS),)
    theirs = (("x-bf-vk", VK_OTHER),)
    op = await gateway.wait((await gateway.start(metadata=mine, selector={"providers": ["openai"]})).name, mine)
    assert (await gateway.get(op.name, mine)).done
    assert (await gateway.get(op.name)).done  # admin
    for call in (
        gateway.ops.GetOperation(operations_pb2.GetOperationRequest(name=op.name), metadata=theirs),
        gateway.ops.CancelOperation(operations_pb2.CancelOperationRequest(name=op.name), metadata=theirs),
        gateway.ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=op.name), metadata=theirs),
        gateway.ops.WaitOperation(operations_pb2.WaitOperationRequest(name=op.name), metadata=theirs),
        gateway.ops.GetOperation(operations_pb2.GetOperationRequest(name="operations/missing"), metadata=mine),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_detail(info.value).error.message.startswith("operation not found")
    listed = await gateway.ops.ListOperations(operations_pb2.ListOperationsRequest(name="operations"), metadata=theirs)
    assert op.name not in [o.name for o in listed.operations]
    listed = await gateway.ops.ListOperations(operations_pb2.ListOperationsRequest(), metadata=mine)
    assert [o.name for o in listed.operations] == [op.name]
    assert not listed.operations[0].HasField("response")  # the list leaves the batches out


async def test_list_pages_newest_first_and_refuses_a_filter(gateway, sim):
    names = []
    for _ in range(5):
        names.append((await gateway.start(selector={"providers": ["openai"]}, validate_only=True)).name)
    seen, token = [], ""
    while True:
        page = await gateway.ops.ListOperations(
            operations_pb2.ListOperationsRequest(page_size=2, page_token=token), metadata=(ADMIN,)
        )
        seen += [o.name for o in page.operations]
        token = page.next_page_token
        if not token:
            break
    assert seen[: len(names)] == names[::-1]
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gateway.ops.ListOperations(operations_pb2.ListOperationsRequest(filter="done=true"), metadata=(ADMIN,))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


# --- stopping, deleting, limits ------------------------------------------------------------------


async def test_cancel_operation_stops_new_cancels_and_skips_the_rest(gateway, sim):
    ids = [seed(sim, "openai", f"batch_stop_{i:02d}") for i in range(20)]
    sim.add_fault("openai", {"latency_ms": 150, "count": 40})  # every call takes a while
    op = await gateway.start(selector={"batches": [(i, "openai") for i in ids]}, max_batches=20)
    await eventually(lambda: len(cancels(sim)) >= 4)
    await gateway.ops.CancelOperation(operations_pb2.CancelOperationRequest(name=op.name), metadata=(ADMIN,))
    sent_when_it_returned = len(sim.calls("openai"))
    done = await gateway.wait(op.name)
    assert done.error.code == grpc.StatusCode.CANCELLED.value[0]
    details = pb.CancelMatchingResult()
    assert done.error.details[0].Unpack(details)
    outcomes = [b.outcome for b in details.batches]
    assert len(outcomes) == 20 and "skipped" in outcomes
    # Calls in flight when it returned may still arrive (up to the concurrency), never a new one.
    assert len(sim.calls("openai")) <= sent_when_it_returned + 4
    counts = meta(done)
    assert counts.skipped == outcomes.count("skipped") and counts.pending == 0
    assert counts.cancel_accepted == outcomes.count("cancelled")


async def test_delete_only_a_finished_operation(gateway, sim):
    seed(sim, "openai", "batch_slow")
    sim.add_fault("openai", {"latency_ms": 500})
    op = await gateway.start(selector={"batches": [("batch_slow", "openai")]})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gateway.ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=op.name), metadata=(ADMIN,))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await gateway.wait(op.name)
    await gateway.ops.DeleteOperation(operations_pb2.DeleteOperationRequest(name=op.name), metadata=(ADMIN,))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await gateway.get(op.name)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_wait_operation_answers_when_its_timeout_runs_out(gateway, sim):
    seed(sim, "openai", "batch_wait")
    sim.add_fault("openai", {"latency_ms": 1500})
    op = await gateway.start(selector={"batches": [("batch_wait", "openai")]})
    request = operations_pb2.WaitOperationRequest(name=op.name, timeout=duration_pb2.Duration(nanos=200_000_000))
    answer = await gateway.ops.WaitOperation(request, metadata=(ADMIN,))
    assert not answer.done and meta(answer).state == "cancelling"
    await gateway.wait(op.name)


async def test_a_caller_runs_a_bounded_number_of_operations(sandbox, sim):
    async with serving(gateway_config(sandbox.url, max_running_per_caller=1)) as gateway:
        seed(sim, "openai", "batch_a")
        sim.add_fault("openai", {"latency_ms": 500})
        first = await gateway.start(selector={"batches": [("batch_a", "openai")]})
        code, detail = await gateway.refused(selector={"batches": [("batch_a", "openai")]})
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and detail.error.code == "too_many_operations"
        await gateway.wait(first.name)


# --- riding out failures -----------------------------------------------------------------------


async def test_a_provider_outage_in_the_middle_is_ridden_out(gateway, sim):
    ids = [seed(sim, "openai", f"batch_outage_{i}") for i in range(6)]
    sim.add_fault("openai", {"status": 503, "count": 8})  # more than the breaker's threshold: it opens
    op = await gateway.wait((await gateway.start(selector={"batches": [(i, "openai") for i in ids]})).name)
    assert {b.outcome for b in result(op).values()} == {"cancelled"}
    assert all(sim.batch("openai", i).status == "cancelling" for i in ids)


async def test_a_429_with_retry_after_pauses_the_provider(gateway, sim):
    ids = [seed(sim, "openai", f"batch_rate_{i}") for i in range(10)]
    sim.set_cancel_rate("openai", 4)
    op = await gateway.wait((await gateway.start(selector={"batches": [(i, "openai") for i in ids]})).name)
    assert {b.outcome for b in result(op).values()} == {"cancelled"}
    refused = [c for c in sim.calls("openai") if c["method"] == "POST"]
    assert len(refused) - 10 <= 8  # paused, not hammered: a few refusals per window at most


async def test_a_listing_that_keeps_failing_fails_the_operation_with_the_providers_error(gateway, sim):
    sim.add_fault("openai", {"status": 401, "count": 1})
    op = await gateway.wait((await gateway.start(selector={"providers": ["openai"]})).name)
    assert op.error.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
    detail = pb.ErrorDetail()
    assert op.error.details[-1].Unpack(detail) and detail.status_code == 401 and not detail.is_bifrost_error
    assert cancels(sim) == []


async def test_with_wait_done_only_once_every_batch_reads_terminal(gateway, sim):
    ids = [seed(sim, "openai", f"batch_w_{i}", cancel_delay_s=0.3) for i in range(3)]
    op = await gateway.wait((await gateway.start(selector={"batches": [(i, "openai") for i in ids]}, wait=True)).name)
    assert {b.batch.status for b in result(op).values()} == {"cancelled"}
    assert {b.outcome for b in result(op).values()} == {"cancelled"}


async def test_a_revoked_key_stops_its_operation(sandbox, sim, tmp_path):
    config = gateway_config(sandbox.url)
    async with serving(config) as gateway:
        ids = [seed(sim, "openai", f"batch_rev_{i}") for i in range(20)]
        sim.add_fault("openai", {"latency_ms": 150, "count": 40})
        mine = (("x-bf-vk", VK_OPS),)
        op = await gateway.start(metadata=mine, selector={"batches": [(i, "openai") for i in ids]}, max_batches=20)
        await eventually(lambda: len(cancels(sim)) >= 2)
        config["governance"]["virtual_keys"][0]["is_active"] = False
        live = gateway.app.live
        assert live.apply(__import__("json").dumps(config).encode(), "test")
        done = await gateway.wait(op.name)
        assert done.error.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
        assert "(ops) was deactivated" in done.error.message
        assert len(cancels(sim)) < 20


# --- a worker dies, another takes over -------------------------------------------------------------


async def test_another_worker_takes_over_an_operation_whose_worker_died(sandbox, sim, tmp_path):
    config = gateway_config(sandbox.url)
    ids = [seed(sim, "openai", f"batch_take_{i:02d}") for i in range(12)]
    path = tmp_path / "state" / "operations.sqlite3"
    first_store = SqliteOperationStore(path)
    async with serving(config, store=first_store) as first:
        sim.add_fault("openai", {"latency_ms": 200, "count": 200})
        op = await first.start(selector={"batches": [(i, "openai") for i in ids]}, max_batches=20)
        await eventually(lambda: len(cancels(sim)) >= 3)
        # The worker dies: its tasks stop where they are, nothing is released or written any more.
        await first.app.operations.scheduler.abandon()
        sim.reset()  # forgets the faults (and the calls so far); batches are seeded again below
        for i in ids:
            seed(sim, "openai", i)
        # The second worker's clock is a lease ahead: the dead worker's lease has run out for it, so
        # it takes the operation over in its first round instead of after two real seconds.
        later = Timing(clock=lambda: time.time() + LEASE_S)
        async with serving(config, store=SqliteOperationStore(path), timing=later) as second:
            done = await second.wait(op.name, seconds=20)
    assert {b.outcome for b in result(done).values()} == {"cancelled"}
    resent = cancels(sim)
    assert len(resent) == len(set(resent))  # each batch at most once more


async def test_a_worker_that_shuts_down_hands_its_operation_over_at_once(sandbox, sim, tmp_path):
    config = gateway_config(sandbox.url, lease_seconds=60)  # a lease that would make a crash wait a minute
    ids = [seed(sim, "openai", f"batch_hand_{i:02d}") for i in range(12)]
    path = tmp_path / "state" / "operations.sqlite3"
    app = await create_server(
        parse_config(config, env={}), operations=OperationsSetup(store=SqliteOperationStore(path), policy=FAST)
    )
    first = Client(app)
    sim.add_fault("openai", {"latency_ms": 200, "count": 8})
    op = await first.start(selector={"batches": [(i, "openai") for i in ids]}, max_batches=20)
    await eventually(lambda: len(cancels(sim)) >= 2)
    await first.channel.close()
    await app.stop(grace=5)  # SIGTERM's path: in-flight calls finish, progress is written, the lease released
    store = SqliteOperationStore(path)
    stored = await store.get(op.name)
    assert stored.holder == "" and not stored.operation.done
    async with serving(config, store=store) as second:
        done = await second.wait(op.name, seconds=10)  # far less than the 60 s lease
    assert {b.outcome for b in result(done).values()} == {"cancelled"}
    paths = cancels(sim)
    assert len(paths) == len(set(paths)) == 12  # nothing was sent twice


class Receiver:
    """A real HTTP webhook receiver on loopback that answers each POST with the next status."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.received = list(statuses), []

    async def __aenter__(self) -> Receiver:
        from aiohttp import web

        async def hook(request: web.Request) -> web.Response:
            self.received.append((dict(request.headers), await request.read()))
            status = self.statuses.pop(0) if self.statuses else 200
            if status == 302:
                return web.Response(status=302, headers={"Location": "http://127.0.0.1:9/elsewhere"})
            return web.Response(status=status)

        app = web.Application()
        app.router.add_post("/hooks/{tail:.*}", hook)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        host, port = self.runner.addresses[0][:2]
        self.url = f"http://{host}:{port}/hooks"
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


@pytest.mark.parametrize(
    ("statuses", "attempts", "delivered"), [([503, 500], 3, True), ([404], 1, False), ([302], 1, False)]
)
async def test_the_webhook_retries_server_errors_and_stops_at_a_refusal(sandbox, sim, statuses, attempts, delivered):
    async with Receiver(statuses) as receiver:
        config = gateway_config(sandbox.url, notify_urls=[receiver.url], notify_secret="hook-secret")
        async with serving(config) as gateway:
            seed(sim, "openai", "batch_hooked")
            op = await gateway.start(
                selector={"batches": [("batch_hooked", "openai")]}, notify=pb.Notify(url=receiver.url + "/a")
            )
            await gateway.wait(op.name)
            store = gateway.app.operations.store

            async def settled() -> bool:  # delivered or given up: the receiver saw every attempt
                return (await store.get(op.name)).operation.notification.state != "pending"

            await eventually(settled)
            notification = (await store.get(op.name)).operation.notification
        assert notification.state == ("delivered" if delivered else "failed")
        assert len(receiver.received) == attempts == notification.attempts
        headers, body = receiver.received[-1]
        assert headers["X-Batchgate-Signature"] == signature(body, "hook-secret")
        assert __import__("json").loads(body)["name"] == op.name
