"""The store contract of long-running operations, run against both engines: the embedded SQLite file
and a real redis-server. Every rule the runner relies on (leases, stop requests, claims, pages) is
shown on each."""

from __future__ import annotations

import asyncio

import pytest

from service.domain.model import BatchState
from service.domain.operations import (
    CANCELLED,
    DONE,
    FAILED,
    NOTIFY_DELIVERED,
    NOTIFY_PENDING,
    BatchItem,
    CancelMatchingCommand,
    Failure,
    Operation,
    Selector,
)
from service.infra.operation_store import (
    BadPageToken,
    LeaseLost,
    RedisOperationStore,
    SaveMode,
    SqliteOperationStore,
    StopRequested,
)

T0 = 1_800_000_000.0


@pytest.fixture(params=["sqlite", "redis"])
async def store(request, tmp_path):
    if request.param == "sqlite":
        engine = SqliteOperationStore(tmp_path / "state" / "operations.sqlite3")
    else:
        redis_server = request.getfixturevalue("redis_server")
        engine = RedisOperationStore(redis_server.url)
    try:
        yield engine
    finally:
        await engine.close()


def operation(name: str = "operations/a", owner: str = "vk:team-a", created: float = T0, **fields) -> Operation:
    selector = Selector(providers=("openai",), metadata={"team": "search"})
    return Operation(name, owner, CancelMatchingCommand(selector), create_time=created, update_time=created, **fields)


def items(count: int, provider: str = "openai") -> list[BatchItem]:
    return [BatchItem(provider, f"batch_{i:05d}", key_id="main") for i in range(count)]


async def test_an_operation_and_its_batches_read_back_as_written(store):
    op = operation(request_id="req-1")
    await store.create(op, items(3), "worker-1", T0 + 15)
    stored = await store.get(op.name)
    assert stored.operation == op
    assert (stored.holder, stored.lease_until, stored.cancel_requested) == ("worker-1", T0 + 15, False)
    assert [item.batch_id for item in await store.items(op.name)] == ["batch_00000", "batch_00001", "batch_00002"]
    assert await store.get("operations/missing") is None
    assert await store.items("operations/missing") == []


async def test_saving_keeps_the_order_found_and_updates_in_place(store):
    op = operation()
    await store.create(op, items(2), "w", T0 + 15)
    settled = items(2)[1]
    settled.outcome, settled.cancel_sent, settled.attempts = CANCELLED, True, 1
    settled.state = BatchState(id=settled.batch_id, status="cancelling", cancelling_at=int(T0))
    later = BatchItem("azure", "batch_az", key_id="az")
    await store.save("w", T0, op, [settled, later])
    read = await store.items(op.name)
    assert [item.key for item in read] == [("openai", "batch_00000"), ("openai", "batch_00001"), ("azure", "batch_az")]
    assert read[1] == settled


async def test_replacing_the_batches_drops_the_old_ones(store):
    op = operation()
    await store.create(op, items(5), "w", T0 + 15)
    await store.save("w", T0, op, items(2, "azure"), SaveMode.REPLACE)
    assert [item.key for item in await store.items(op.name)] == [("azure", "batch_00000"), ("azure", "batch_00001")]


async def test_a_large_save_goes_through_whole(store):
    op = operation()
    await store.create(op, [], "w", T0 + 15)
    op.state = "cancelling"
    await store.save("w", T0, op, items(2500), SaveMode.REPLACE)
    assert len(await store.items(op.name)) == 2500
    assert (await store.get(op.name)).operation.state == "cancelling"


async def test_only_the_lease_holder_writes(store):
    op = operation()
    await store.create(op, [], "w1", T0 + 15)
    with pytest.raises(LeaseLost):
        await store.save("w2", T0, op, items(1))
    with pytest.raises(LeaseLost):  # its own lease, expired
        await store.save("w1", T0 + 16, op, items(1))
    with pytest.raises(LeaseLost):
        await store.save("w1", T0, operation("operations/gone"))
    assert await store.items(op.name) == []


async def test_a_cancel_request_stops_checked_writes_only(store):
    op = operation()
    await store.create(op, [], "w", T0 + 15)
    assert await store.request_cancel(op.name)
    assert not await store.request_cancel("operations/missing")
    with pytest.raises(StopRequested):
        await store.save("w", T0, op, items(1), SaveMode.UNLESS_STOPPED)
    assert await store.items(op.name) == []
    op.state = DONE
    op.done = True
    op.error = Failure("cancelled", status_code=499, type="cancelled", code="cancelled")
    await store.save("w", T0, op, items(1))
    stored = await store.get(op.name)
    assert stored.cancel_requested and stored.operation.done and stored.operation.error.status_code == 499


async def test_claims_take_expired_leases_once(store):
    a, b, c = operation("operations/a"), operation("operations/b", created=T0 + 1), operation("operations/c")
    await store.create(a, [], "w1", T0 + 15)
    await store.create(b, [], "w1", T0 + 5)
    await store.create(c, [], "w1", T0 + 5)
    c.done, c.state = True, DONE
    await store.save("w1", T0, c)
    assert await store.claim("w2", T0 + 1, T0 + 16, 10) == []
    claimed = await asyncio.gather(*(store.claim(f"w{i}", T0 + 6, T0 + 21, 10) for i in range(2, 6)))
    assert sorted(name for names in claimed for name in names) == ["operations/b"]  # c is done, a still leased
    winner = next(i for i, names in enumerate(claimed) if names)
    assert (await store.get("operations/b")).holder == f"w{winner + 2}"
    with pytest.raises(LeaseLost):  # the old holder learns it on its next write
        await store.save("w1", T0 + 6, b)


async def test_a_done_operation_with_a_webhook_to_deliver_is_still_claimed(store):
    op = operation(done=True, state=DONE)
    op.notification.state = NOTIFY_PENDING
    await store.create(operation(), [], "w1", T0 + 15)
    await store.save("w1", T0, op)
    assert await store.claim("w2", T0 + 20, T0 + 35, 10) == [op.name]
    op.notification.state = NOTIFY_DELIVERED
    await store.save("w2", T0 + 20, op)
    assert await store.claim("w3", T0 + 60, T0 + 75, 10) == []


async def test_renew_extends_held_leases_and_says_when_a_cancel_was_asked(store):
    await store.create(operation("operations/a"), [], "w1", T0 + 15)
    await store.create(operation("operations/b"), [], "w1", T0 + 15)
    await store.create(operation("operations/c"), [], "w2", T0 + 15)
    await store.request_cancel("operations/b")
    held = await store.renew("w1", ["operations/a", "operations/b", "operations/c", "operations/x"], T0 + 5, T0 + 20)
    assert held == {"operations/a": False, "operations/b": True}
    assert (await store.get("operations/a")).lease_until == T0 + 20
    assert await store.claim("w3", T0 + 16, T0 + 31, 10) == ["operations/c"]
    assert await store.renew("w1", ["operations/a"], T0 + 21, T0 + 36) == {}  # expired: not renewed


async def test_released_leases_are_claimed_at_once(store):
    await store.create(operation(), [], "w1", T0 + 15)
    await store.release("w2", ["operations/a"])  # not its lease: nothing happens
    assert await store.claim("w3", T0 + 1, T0 + 16, 10) == []
    await store.release("w1", ["operations/a"])
    assert await store.claim("w3", T0 + 1, T0 + 16, 10) == ["operations/a"]


async def test_listing_is_newest_first_in_pages_per_owner(store):
    for i in range(7):
        await store.create(operation(f"operations/{i}", "vk:a" if i % 2 else "admin", created=T0 + i), [], "w", T0)
    await store.create(operation("operations/same-time", "vk:a", created=T0 + 5), [], "w", T0)
    seen, token = [], ""
    while True:
        page, token = await store.page(None, 3, token)
        seen += [op.name for op in page]
        if not token:
            break
    assert seen[0] == "operations/6"
    assert sorted(seen) == sorted([f"operations/{i}" for i in range(7)] + ["operations/same-time"])
    assert len(seen) == len(set(seen)) == 8
    mine, token = await store.page("vk:a", 10, "")
    assert [op.owner for op in mine] == ["vk:a"] * 4 and token == ""
    assert [op.create_time for op in mine] == sorted((op.create_time for op in mine), reverse=True)
    with pytest.raises(BadPageToken):
        await store.page(None, 3, "not-a-token!")


async def test_running_counts_and_deletion(store):
    await store.create(operation("operations/a"), [], "w", T0 + 15)
    await store.create(operation("operations/b"), items(3), "w", T0 + 15)
    assert await store.count_running("vk:team-a") == 2
    done = operation("operations/b", done=True, state=DONE)
    done.counts.failed = 3
    await store.save("w", T0, done, [BatchItem("openai", "batch_00000", outcome=FAILED)])
    assert await store.count_running("vk:team-a") == 1
    assert await store.delete("operations/b")
    assert not await store.delete("operations/b")
    assert await store.get("operations/b") is None and await store.items("operations/b") == []
    assert [op.name for op in (await store.page(None, 10, ""))[0]] == ["operations/a"]


async def test_finished_operations_older_than_the_retention_are_deleted_oldest_first(store):
    day = 86400.0
    for i, (done, webhook) in enumerate([(True, ""), (True, ""), (False, ""), (True, NOTIFY_PENDING), (True, "")]):
        op = operation(f"operations/{i}", created=T0 - (40 - i) * day)  # 40, 39, 38, 37 and 36 days old
        await store.create(op, items(3), "w", T0 + 15)
        op.done, op.state, op.notification.state = done, DONE if done else "cancelling", webhook
        await store.save("w", T0, op)
    young = operation("operations/young", created=T0 - 29 * day, done=True, state=DONE)
    await store.create(young, items(1), "w", T0 + 15)
    await store.save("w", T0, young)
    cutoff = T0 - 30 * day
    assert await store.delete_finished(cutoff, 1) == ["operations/0"]
    # Not done, or its webhook not delivered yet: kept whatever its age, as is anything younger.
    assert await store.delete_finished(cutoff, 10) == ["operations/1", "operations/4"]
    assert await store.delete_finished(cutoff, 10) == []
    assert await store.get("operations/0") is None and await store.items("operations/0") == []
    kept = [op.name for op in (await store.page(None, 10, ""))[0]]
    assert kept == ["operations/young", "operations/3", "operations/2"]
    assert [op.name for op in (await store.page("vk:team-a", 10, ""))[0]] == kept
    assert await store.count_running("vk:team-a") == 1
