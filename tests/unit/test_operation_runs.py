"""Operations run through their phases with no network: the real runner, use case and OpenAI adapter
over an executor that answers from memory (an OpenAI account), a SQLite store, and stepped time.
Backoffs, Retry-After pauses, the deadline and the webhook's retries are checked as the clock moves,
never waited for: a phase that sleeps moves the clock by exactly what it asked for."""

from __future__ import annotations

import json
from collections.abc import Callable
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from service.domain.operations import (
    CANCELLED,
    FAILED,
    NOTIFY_DELIVERED,
    NOTIFY_FAILED,
    BatchItem,
    CancelMatchingCommand,
    Operation,
    Selector,
)
from service.edge.operation_proto import operation_json
from service.infra.operation_store import SqliteOperationStore
from service.infra.providers.base import UpstreamResponse
from service.infra.providers.catalog import parse_config
from service.infra.resilience import CircuitBreaker
from service.infra.timing import Timing
from service.runtime.build import Collaborators, RuntimeFactory
from service.usecases.operations import Backoff, OperationPolicy, Runner, Webhook, Worker
from tests.support import SteppedClock

T0 = 1_800_000_000.0
HOOK = "https://hooks.example.com/batchgate"
CONFIG = parse_config(
    {
        # One cancel (or read) at a time: each wait moves the stepped clock once.
        "client": {"bulk_concurrency": 1},
        "providers": {
            "openai": {
                "keys": [{"name": "k", "value": "sk-x", "use_for_batch_api": True}],
                "network_config": {"base_url": "http://openai.invalid", "max_retries": 0},
            }
        },
        "operations": {"notify_urls": [HOOK], "notify_secret": "hook-secret"},
    },
    env={},
)
# No jitter: each delay is the policy's number exactly.
POLICY = OperationPolicy(
    retry=Backoff(first_s=1.0, max_s=30.0, jitter=0.0),
    listing_retry=Backoff(first_s=2.0, max_s=60.0, jitter=0.0),
    webhook_retry=Backoff(first_s=1.0, max_s=300.0, jitter=0.0),
)


class Account:
    """An OpenAI account in memory behind the executor's `send`: its batches, answers scripted to
    come first (`fail`), and every request as (time, kind, batch id or page cursor)."""

    def __init__(self, clock: SteppedClock) -> None:
        self.clock = clock
        self.batches: dict[str, dict] = {}
        self.failures: dict[str, list[tuple[int, dict[str, str]]]] = {"list": [], "cancel": [], "read": []}
        self.sent: list[tuple[float, str, str]] = []
        self.breaker = CircuitBreaker("openai")

    def seed(self, *ids: str, status: str = "in_progress") -> list[str]:
        for batch_id in ids:
            self.batches[batch_id] = {"id": batch_id, "object": "batch", "status": status, "created_at": int(T0)}
        return list(ids)

    def fail(self, kind: str, status: int, times: int = 1, **headers: str) -> None:
        """The next `times` requests of `kind` (list, cancel, read) are answered `status`."""
        self.failures[kind] += [(status, headers)] * times

    def calls(self, kind: str) -> list[float]:
        """When each request of `kind` was sent."""
        return [at for at, sent, _ in self.sent if sent == kind]

    async def send(self, request, deadline, record=None) -> UpstreamResponse:
        parts = urlsplit(request.url)
        path = parts.path.split("/")
        if request.method == "POST":
            kind, subject = "cancel", path[-2]
        elif path[-1] == "batches":
            kind, subject = "list", parse_qs(parts.query).get("after", [""])[0]
        else:
            kind, subject = "read", path[-1]
        self.sent.append((self.clock(), kind, subject))
        if self.failures[kind]:
            status, headers = self.failures[kind].pop(0)
            body = {"error": {"message": f"scripted {status}", "type": "server_error", "code": None}}
            return UpstreamResponse(status, {"Content-Type": "application/json", **headers}, orjson.dumps(body))
        if kind == "list":
            return self._answer({"object": "list", "data": list(self.batches.values()), "has_more": False})
        batch = self.batches.get(subject)
        if batch is None:
            missing = {"error": {"message": "No batch", "type": "invalid_request_error"}}
            return UpstreamResponse(404, {"Content-Type": "application/json"}, orjson.dumps(missing))
        if kind == "cancel":
            batch["status"] = "cancelling"
        return self._answer(batch)

    @staticmethod
    def _answer(data: dict) -> UpstreamResponse:
        return UpstreamResponse(200, {"Content-Type": "application/json"}, orjson.dumps(data))

    async def close(self) -> None:
        pass


class Sender:
    """A webhook receiver stand-in: answers each POST with the next status (then 200)."""

    def __init__(self, *statuses: int) -> None:
        self.statuses = list(statuses)
        self.posted: list[tuple[float, str, bytes]] = []
        self.clock: Callable[[], float] = lambda: 0.0

    async def post(self, url: str, body: bytes, secret: str) -> int:
        self.posted.append((self.clock(), url, body))
        return self.statuses.pop(0) if self.statuses else 200

    async def close(self) -> None:
        pass


@pytest.fixture
async def world(tmp_path):
    clock = SteppedClock(T0)
    account = Account(clock)
    factory = RuntimeFactory.for_config(CONFIG, Collaborators(executor=lambda name, config, breaker: account))
    runtimes = SimpleNamespace(current=factory.build(CONFIG, "unit"))
    store = SqliteOperationStore(tmp_path / "operations.sqlite3")
    sender = Sender()
    sender.clock = clock
    worker = Worker(
        store,
        runtimes,
        holder="w",
        timing=Timing(clock=clock, sleep=clock.sleep, rand=lambda: 0.0),
        policy=POLICY,
        webhook=Webhook(operation_json, sender),
    )
    yield SimpleNamespace(clock=clock, account=account, store=store, worker=worker, sender=sender)
    await store.close()


async def run(world, selector: Selector, **command) -> tuple[Operation, dict[str, BatchItem]]:
    """Creates the operation as CancelMatching does, runs it to its end, and reads it back."""
    op = Operation("operations/t", "admin", CancelMatchingCommand(selector, **command), T0, T0)
    items = [BatchItem(provider, batch_id) for batch_id, provider in selector.batches]
    await world.store.create(op, items, "w", T0 + 10**6)
    await Runner(op.name, world.worker).run()
    stored = await world.store.get(op.name)
    return stored.operation, {item.batch_id: item for item in await world.store.items(op.name)}


LISTED = Selector(providers=("openai",))


async def test_a_listing_answered_429_lists_again_only_after_its_retry_after(world):
    ids = world.account.seed("batch_a", "batch_b")
    world.account.fail("list", 429, **{"Retry-After": "30"})
    op, items = await run(world, LISTED)
    first, second = world.account.calls("list")
    assert second - first == 30.0  # the provider's 30 s, not the listing's own 2 s backoff
    assert op.error is None and {items[i].outcome for i in ids} == {CANCELLED}


async def test_a_listing_that_keeps_failing_backs_off_until_it_would_pass_the_deadline(world):
    world.account.seed("batch_a")
    world.account.fail("list", 503, times=100)
    op, items = await run(world, LISTED, deadline_seconds=60)
    calls = world.account.calls("list")
    assert [b - a for a, b in zip(calls, calls[1:], strict=False)] == [2.0, 4.0, 8.0, 16.0]  # then 32 s: past 60
    assert op.error is not None and op.error.status_code == 503 and items == {}
    assert world.account.calls("cancel") == []


async def test_a_429_pauses_the_providers_cancels_for_its_retry_after(world):
    ids = world.account.seed("batch_a", "batch_b", "batch_c")
    world.account.fail("cancel", 429, **{"Retry-After": "20"})
    op, items = await run(world, Selector(batches=tuple((i, "openai") for i in ids)))
    assert [at - T0 for at in world.account.calls("cancel")] == [0.0, 20.0, 20.0, 20.0]  # nothing while paused
    assert {items[i].outcome for i in ids} == {CANCELLED} and op.counts.cancel_accepted == 3


async def test_a_batch_that_keeps_failing_is_given_up_when_the_operation_is(world):
    (batch_id,) = world.account.seed("batch_a")
    world.account.fail("cancel", 503, times=100)
    op, items = await run(world, Selector(batches=((batch_id, "openai"),)), deadline_seconds=60)
    cancels = world.account.calls("cancel")
    assert [b - a for a, b in zip(cancels, cancels[1:], strict=False)] == [1.0, 2.0, 4.0, 8.0, 16.0]  # then 32: past 60
    assert items[batch_id].outcome == FAILED and items[batch_id].error.status_code == 503
    assert op.counts.failed == 1 and op.error is None


async def test_with_wait_the_batches_are_read_until_terminal_on_the_poll_policy(world):
    (batch_id,) = world.account.seed("batch_a")
    world.account.fail("read", 503)  # a failed read is tried again next round
    original = world.account.send

    async def settle_after_two_reads(request, deadline, record=None):
        if len(world.account.calls("read")) == 2:
            world.account.batches[batch_id]["status"] = "cancelled"
        return await original(request, deadline, record)

    world.account.send = settle_after_two_reads
    op, items = await run(world, Selector(batches=((batch_id, "openai"),)), wait=True)
    reads = world.account.calls("read")
    assert [at - T0 for at in reads] == [1.0, 3.0, 7.0]  # first after 1 s, gaps doubling (no jitter)
    assert items[batch_id].state.status == "cancelled" and items[batch_id].settled


async def test_the_webhook_is_tried_again_on_5xx_with_backoff_and_delivered(world):
    (batch_id,) = world.account.seed("batch_a")
    world.sender.statuses = [503, 500]
    op, _ = await run(world, Selector(batches=((batch_id, "openai"),)), notify_url=HOOK + "/a")
    assert [at - T0 for at, _, _ in world.sender.posted] == [0.0, 1.0, 3.0]
    assert op.notification.state == NOTIFY_DELIVERED and op.notification.attempts == 3
    body = json.loads(world.sender.posted[-1][2])
    assert body["name"] == op.name and body["response"]["batches"][0]["outcome"] == "cancelled"


async def test_the_webhook_is_given_up_an_hour_after_the_operation_finished(world):
    (batch_id,) = world.account.seed("batch_a")
    world.sender.statuses = [503] * 100
    op, _ = await run(world, Selector(batches=((batch_id, "openai"),)), notify_url=HOOK + "/a")
    times = [at - T0 for at, _, _ in world.sender.posted]
    assert times[:6] == [0.0, 1.0, 3.0, 7.0, 15.0, 31.0] and times[-1] < 3600 <= times[-1] + 300
    assert op.notification.state == NOTIFY_FAILED and op.notification.last_error == "HTTP 503"
    assert op.notification.attempts == len(times)


async def test_a_refused_webhook_is_not_tried_again(world):
    (batch_id,) = world.account.seed("batch_a")
    world.sender.statuses = [404]
    op, _ = await run(world, Selector(batches=((batch_id, "openai"),)), notify_url=HOOK + "/a")
    assert len(world.sender.posted) == 1 and op.notification.state == NOTIFY_FAILED
    assert op.notification.last_error == "HTTP 404"
