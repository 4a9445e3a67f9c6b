"""The client library's cancel by selector and google.longrunning calls against the real
operations servicer over real gRPC on loopback, with the sandbox over real HTTP behind it (whose
recorded calls show what was and was not sent): both clients, typed operations, metadata and
results, the cap as an `OperationError` with its exception class, paging, waiting, stopping,
deleting, and who may see what. The blocking client runs in a worker thread (the in-process
server needs this event loop to answer).
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import re

import grpc
import pytest
from batchgate_client import (
    AsyncBatchgateClient,
    Batch,
    BatchgateClient,
    Cancelled,
    Conflict,
    InvalidRequest,
    NotFound,
    Operation,
    PermissionDenied,
)
from batchgate_client.cli import run
from google.protobuf import json_format

from tests.integration.test_operations import ADMIN, NOW, VK_OPS, VK_OTHER, VK_PLAIN, cancels, gateway_config, seed
from tests.integration.test_operations import serving as serving_operations

# A fault the sandbox answers every cancel with: the operation retries it until it is stopped.
DOWN = {"status": 503, "count": 100_000}


class Adapter:
    """One async face for both clients: `call("get_operation", name)` awaits the coroutine, or runs
    the blocking method in a thread; `all_operations()` collects `list_operations`."""

    def __init__(self, kind: str, target: str, **kwargs) -> None:
        self.kind = kind
        self.client = (BatchgateClient if kind == "sync" else AsyncBatchgateClient)(target, **kwargs)

    async def call(self, method: str, *args, **kwargs):
        bound = getattr(self.client, method)
        if self.kind == "sync":
            return await asyncio.to_thread(bound, *args, **kwargs)
        return await bound(*args, **kwargs)

    async def all_operations(self, **kwargs) -> list[Operation]:
        if self.kind == "sync":
            return await asyncio.to_thread(lambda: list(self.client.list_operations(**kwargs)))
        return [op async for op in self.client.list_operations(**kwargs)]

    async def close(self) -> None:
        if self.kind == "sync":
            self.client.close()
        else:
            await self.client.close()


@pytest.fixture(params=["sync", "async"])
async def connect(request, sandbox, sim):
    """`connect(**client_kwargs)` -> an Adapter on a fresh operations gateway, closed after the test
    (admin credentials unless it is given a `vk`)."""
    adapters: list[Adapter] = []
    async with serving_operations(gateway_config(sandbox.url)) as gateway:

        def make(**kwargs) -> Adapter:
            if "vk" not in kwargs:
                kwargs["metadata"] = [ADMIN]
            adapters.append(Adapter(request.param, f"127.0.0.1:{gateway.app.port}", **kwargs))
            return adapters[-1]

        yield make
        for adapter in adapters:
            await adapter.close()


async def test_named_batches_come_back_as_a_typed_operation(connect, sim):
    client = connect()
    running = seed(sim, "openai", "batch_run")
    ended = seed(sim, "openai", "batch_ended", status="completed")
    started = await client.call(
        "cancel_matching",
        batches=[(running, "openai"), ("batch_missing", "openai"), {"id": ended, "provider": "openai"}],
    )
    assert isinstance(started, Operation) and started.name.startswith("operations/") and not started.done
    assert started.metadata.created_by == "admin" and started.result is None and started.error is None
    op = await client.call("wait_operation", started.name, 30)
    assert op.done and op.ok and op.metadata.state == "done"
    meta = op.metadata
    assert (meta.matched, meta.cancel_accepted, meta.already_ended, meta.failed, meta.pending) == (3, 1, 1, 1, 0)
    assert meta.create_time <= meta.update_time and meta.settled == 3
    batches = {batch.id: batch for batch in op.result.batches}
    assert {i: b.outcome for i, b in batches.items()} == {
        running: "cancelled",
        ended: "already_ended",
        "batch_missing": "failed",
    }
    cancelled = batches[running]
    assert isinstance(cancelled.batch, Batch) and cancelled.status == "cancelling" and cancelled.key_id == "sandbox"
    assert cancelled.batch.cancelled_at is None and cancelled.error is None
    missing = batches["batch_missing"]
    assert isinstance(missing.error, NotFound) and missing.error.status_code == 404
    assert op.result.by_outcome("failed") == (missing,)
    assert op.to_dict() == json_format.MessageToDict(
        op.raw, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert op.to_dict()["response"]["@type"] == "type.googleapis.com/batchgate.v1.CancelMatchingResult"


async def test_a_dry_run_by_selector_matches_and_cancels_nothing(connect, sim):
    client = connect(vk=VK_OPS)
    seed(sim, "openai", "oa_team", metadata={"team": "search"}, created_at=NOW - 600)
    seed(sim, "openai", "oa_old", metadata={"team": "search"}, created_at=NOW - 9 * 86400)
    seed(sim, "openai", "oa_other", metadata={"team": "ads"}, created_at=NOW - 600)
    since = datetime.datetime.fromtimestamp(NOW - 86400, datetime.UTC)
    started = await client.call(
        "cancel_matching",
        providers=["openai"],
        statuses=["in_progress", "validating"],
        created_after=since,
        metadata={"team": "search"},
        validate_only=True,
    )
    op = await client.call("wait_operation", started.name)
    assert [(b.id, b.outcome, b.status) for b in op.result.batches] == [("oa_team", "matched", "in_progress")]
    selector = op.metadata.selector
    assert selector.providers == ("openai",) and selector.metadata == {"team": "search"}
    assert selector.created_after == NOW - 86400 and selector.created_before is None
    assert set(selector.statuses) == {"in_progress", "validating"}
    assert op.metadata.validate_only and op.metadata.created_by == "ops"
    assert cancels(sim) == []


async def test_more_matches_than_max_batches_is_an_error_with_the_conflict_class(connect, sim):
    client = connect()
    for i in range(3):
        seed(sim, "openai", f"batch_cap_{i}")
    op = await client.call(
        "wait_operation", (await client.call("cancel_matching", providers=["openai"], max_batches=2)).name
    )
    assert op.done and not op.ok and op.result is None
    assert op.error.code == 9 and op.error.grpc_code == grpc.StatusCode.FAILED_PRECONDITION
    assert op.error.message == "matches 3 batches, more than max_batches 2; nothing was cancelled"
    assert isinstance(op.error.exception, Conflict) and op.error.exception.status_code == 409
    assert op.metadata.matched == 3 and cancels(sim) == []


async def test_refusals_raise_their_class_before_anything_is_listed(connect, sim):
    plain = connect(vk=VK_PLAIN)
    with pytest.raises(PermissionDenied) as info:
        await plain.call("cancel_matching", providers=["openai"])
    assert info.value.code == "cancel_matching_not_allowed"
    with pytest.raises(InvalidRequest, match="unknown provider: nope"):
        await connect().call("cancel_matching", providers=["nope"])
    assert sim.calls() == []


async def test_an_operation_is_invisible_to_another_key(connect, sim):
    seed(sim, "openai", "oa_1")
    mine, theirs = connect(vk=VK_OPS), connect(vk=VK_OTHER)
    op = await mine.call("wait_operation", (await mine.call("cancel_matching", providers=["openai"])).name)
    assert [listed.name for listed in await mine.all_operations()] == [op.name]
    assert await theirs.all_operations() == []
    for method in ("get_operation", "cancel_operation", "delete_operation", "wait_operation"):
        with pytest.raises(NotFound, match="operation not found"):
            await theirs.call(method, op.name)
    assert (await mine.call("get_operation", op.id)).name == op.name  # the bare id works too


async def test_list_operations_follows_every_page_newest_first(connect, sim):
    client = connect()
    names = [(await client.call("cancel_matching", providers=["openai"], validate_only=True)).name for _ in range(5)]
    page = await client.call("list_operations_page", page_size=2)
    assert [op.name for op in page.operations] == names[::-1][:2] and page.next_page_token
    assert page.operations[0].result is None  # the list leaves the batches out
    second = await client.call("list_operations_page", page_size=2, page_token=page.next_page_token)
    assert [op.name for op in second.operations] == names[::-1][2:4]
    assert [op.name for op in await client.all_operations(page_size=2)][:5] == names[::-1]
    assert page.to_dict()["next_page_token"] == page.next_page_token


async def test_wait_returns_a_running_operation_when_its_timeout_runs_out_and_cancel_stops_it(connect, sim):
    client = connect()
    batch_id = seed(sim, "openai", "batch_down")
    sim.add_fault("openai", DOWN)  # every cancel answers 503: the operation keeps retrying
    started = await client.call("cancel_matching", batches=[(batch_id, "openai")])
    running = await client.call("wait_operation", started.name, 0.2)
    assert not running.done and running.metadata.state in ("listing", "cancelling")
    with pytest.raises(Conflict, match="still running"):
        await client.call("delete_operation", started.name)
    await client.call("cancel_operation", started.name)
    stopped = await client.call("wait_operation", started.name, 30)
    assert stopped.done and stopped.error.code == 1 and isinstance(stopped.error.exception, Cancelled)
    assert [(b.id, b.outcome) for b in stopped.result.batches] == [(batch_id, "skipped")]
    assert stopped.metadata.skipped == 1
    await client.call("delete_operation", started.name)
    with pytest.raises(NotFound):
        await client.call("get_operation", started.name)


# --- the command -----------------------------------------------------------------------------------


@pytest.fixture
async def target(sandbox, sim):
    async with serving_operations(gateway_config(sandbox.url)) as gateway:
        yield f"127.0.0.1:{gateway.app.port}"


async def batchgate(target: str, *argv: str, admin: bool = True, stdin: str = "") -> tuple[int, str, str]:
    """Runs the command in a thread (piped: not a terminal); returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    credentials = ["--admin", "admin"] if admin else []
    code = await asyncio.to_thread(
        run, ["--target", target, *credentials, *argv], stdin=io.StringIO(stdin), stdout=out, stderr=err
    )
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(autouse=True)
def admin_password(monkeypatch):
    monkeypatch.setenv("BATCHGATE_ADMIN_PASSWORD", "hunter2-admin")
    monkeypatch.delenv("BATCHGATE_VK", raising=False)


def seed_team(sim, team: str, n: int, provider: str = "openai", **fields) -> list[str]:
    return [
        seed(sim, provider, f"{provider[:2]}_{team}_{i}", metadata={"team": team}, created_at=NOW - 600, **fields)
        for i in range(n)
    ]


async def test_stop_dry_run_prints_each_match_and_cancels_nothing(target, sim):
    mine = seed_team(sim, "search", 2) + seed_team(sim, "search", 1, "azure")
    seed_team(sim, "ads", 2)
    code, out, err = await batchgate(target, "stop", "--dry-run", "--metadata", "team=search", "--created-after", "1d")
    assert code == 0, err
    lines = out.splitlines()
    assert sorted(line.split()[0] for line in lines) == sorted(mine)
    assert all(line.split()[2:4] == ["matched", "in_progress"] for line in lines)
    *progress, summary = err.splitlines()
    assert all(re.fullmatch(r"operations/\S+ (listing|cancelling): \d+ matched.*", line) for line in progress), err
    assert re.fullmatch(r"operations/\S+ done in \d+s \(dry run\): 3 matched \(openai 2, azure 1\)", summary), err
    assert cancels(sim) == []


async def test_stop_without_yes_off_a_terminal_refuses_before_any_call(target, sim):
    seed_team(sim, "search", 1)
    code, out, err = await batchgate(target, "stop", "--metadata", "team=search")
    assert code == 2 and out == "" and "refusing to cancel batches nobody has seen" in err
    assert sim.calls() == []


async def test_stop_yes_cancels_exactly_the_matches_and_follows_them(target, sim):
    mine = seed_team(sim, "search", 3)
    others = seed_team(sim, "ads", 2)
    code, out, err = await batchgate(target, "stop", "--yes", "-p", "openai", "--metadata", "team=search")
    assert code == 0, err
    assert sorted(line.split()[:3] for line in out.splitlines()) == [[i, "openai", "cancelled"] for i in sorted(mine)]
    assert sorted(path.split("/")[-2] for path in cancels(sim)) == sorted(mine)
    assert all(sim.batch("openai", i).status == "in_progress" for i in others)
    *progress, summary = err.splitlines()
    assert progress and all(line.startswith("operations/") for line in progress)  # plain progress lines
    assert re.fullmatch(
        r"operations/\S+ done in \d+s: 3 matched: 3 cancel accepted, 0 already ended, 0 failed", summary
    )


async def test_more_matches_than_max_exits_2_saying_how_many_and_the_cap(target, sim):
    seed_team(sim, "search", 3)
    code, out, err = await batchgate(target, "stop", "--yes", "--metadata", "team=search", "--max", "2")
    assert code == 2 and out == ""
    assert err.endswith(": matches 3 batches, more than max_batches 2; nothing was cancelled\n"), err
    assert cancels(sim) == []


async def test_a_failed_batch_exits_1_and_names_it(target, sim):
    (batch_id,) = seed_team(sim, "search", 1)
    refusal = {"status": 400, "body": '{"error": {"message": "no", "type": "invalid_request_error"}}'}
    sim.add_fault("openai", [{"latency_ms": 1}, refusal])  # the listing's one page goes through, the cancel is refused
    code, out, err = await batchgate(target, "stop", "--yes", "--metadata", "team=search")
    assert code == 1, err
    assert out.startswith(f"{batch_id} openai failed ") and " error 400 " in out
    assert err.splitlines()[-1].endswith("1 matched: 0 cancel accepted, 0 already ended, 1 failed")


async def test_a_key_without_selector_permission_exits_2(target, sim):
    code, out, err = await batchgate(
        target, "--vk", VK_PLAIN, "stop", "--yes", "--metadata", "team=search", admin=False
    )
    assert code == 2 and out == ""
    assert err.startswith("batchgate: the call failed: 403 cancel_matching_not_allowed: ")


async def test_json_output_is_the_rest_operation(target, sim):
    (batch_id,) = seed_team(sim, "search", 1)
    code, out, err = await batchgate(target, "stop", "--yes", "--metadata", "team=search", "-o", "json")
    assert code == 0 and err == ""
    (line,) = out.splitlines()
    body = json.loads(line)
    assert body["done"] is True and body["metadata"]["cancel_accepted"] == 1
    assert body["response"]["batches"][0]["id"] == batch_id and body["response"]["batches"][0]["key_id"] == "sandbox"


async def test_detach_then_the_operations_subcommands(target, sim):
    seed_team(sim, "search", 2)
    code, out, _ = await batchgate(target, "stop", "--yes", "--detach", "--metadata", "team=search")
    assert code == 0 and re.fullmatch(r"operations/[A-Za-z0-9_-]+\n", out)
    name = out.strip()
    code, out, _ = await batchgate(target, "operations", "wait", name, "-o", "json")
    assert code == 0 and json.loads(out)["done"] is True
    code, out, _ = await batchgate(target, "operations", "get", name.removeprefix("operations/"))
    lines = out.splitlines()
    assert code == 0 and lines[0].startswith(f"{name}: done (cancel), created ") and " by admin, " in lines[0]
    assert (
        lines[1]
        == "selector: every provider that can list; running (validating, in_progress, finalizing); metadata team=search"
    )
    assert lines[2] == "2 matched: 2 cancel accepted, 0 already ended, 0 failed"
    assert len(lines) == 5 and all(" cancelled cancelling sandbox" in line for line in lines[3:])
    code, out, _ = await batchgate(target, "operations", "list")
    assert (
        code == 0
        and out.startswith(f"{name} cancel ")
        and " admin matched=2 accepted=2 " in out
        and out.endswith(" ok\n")
    )
    code, out, _ = await batchgate(target, "operations", "list", "-o", "json", "--page-size", "1")
    assert [json.loads(line)["name"] for line in out.splitlines()] == [name]
    code, out, _ = await batchgate(target, "operations", "delete", name)
    assert (code, out) == (0, f"{name} deleted\n")
    code, _, err = await batchgate(target, "operations", "get", name)
    assert code == 2 and "404 operation_not_found" in err


async def test_operations_cancel_stops_a_running_one_and_wait_then_exits_1(target, sim):
    (batch_id,) = seed_team(sim, "search", 1)
    sim.add_fault("openai", [{"latency_ms": 1}, DOWN])  # the listing goes through, every cancel answers 503
    code, out, _ = await batchgate(target, "stop", "--yes", "--detach", "--metadata", "team=search")
    name = out.strip()
    async with AsyncBatchgateClient(target, metadata=[ADMIN]) as client:  # until it has found the batch
        while (await client.wait_operation(name, 0.05)).metadata.state == "listing":
            pass
    code, out, _ = await batchgate(target, "operations", "cancel", name)
    assert (code, out) == (0, f"{name}: stopped; no new cancel starts, batches not yet cancelled end as skipped\n")
    code, out, err = await batchgate(target, "operations", "wait", name)
    assert code == 1
    assert out.startswith(f"{batch_id} openai skipped ")
    assert re.search(r"1 matched: 0 cancel accepted, 0 already ended, 0 failed, 1 skipped; error 1: .+", err), err
