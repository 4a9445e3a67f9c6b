"""Operations in parts: the work queue (pauses, retries, turns), progress writes (grouping, the stop
check, a lost lease), request checks and webhook URL prefixes, the proto and JSON rendering, the
scheduler's leases, and the config block. Time is stepped, never waited for."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
from types import SimpleNamespace

import pytest
from google.protobuf import json_format

from service.config.operations import NotifyTarget
from service.config.reader import ConfigError
from service.domain.errors import InvalidRequest, PermissionDenied, Unauthenticated
from service.domain.model import BatchState, RequestCounts
from service.domain.operations import (
    ALREADY_ENDED,
    CANCELLED,
    DONE,
    FAILED,
    MATCHED,
    PENDING,
    SKIPPED,
    BatchItem,
    CancelMatchingCommand,
    Counts,
    Failure,
    Operation,
    Selector,
)
from service.edge.operation_proto import (
    JSON_OPTIONS,
    JSON_PER_TURN,
    RENDER_PER_TURN,
    matching_command,
    operation_json,
    operation_to_proto,
    render_operation,
)
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.infra.operation_store import LeaseLost, SqliteOperationStore, StopRequested
from service.infra.providers.catalog import parse_config
from service.infra.timing import Timing
from service.infra.webhook import signature
from service.runtime.build import RuntimeFactory
from service.usecases.auth import Caller
from service.usecases.operations import Backoff, OperationPolicy, Scheduler, Worker
from service.usecases.operations.checks import check_access, check_request, normalized, owner_caller
from service.usecases.operations.progress import Progress
from service.usecases.operations.runner import result_label
from service.usecases.operations.work import WorkQueue
from tests.support import SteppedClock, eventually

T0 = 1_800_000_000.0


# --- the work queue ------------------------------------------------------------------------------


def stepped_queue(items):
    """A queue on stepped time: a take that has to wait for a retry or a pause moves the clock."""
    clock = SteppedClock()
    return WorkQueue(items, Timing(clock=clock, sleep=clock.sleep)), clock


async def test_providers_take_turns_and_the_queue_ends_when_everything_settled():
    queue, clock = stepped_queue([("a", 1), ("a", 2), ("a", 3), ("b", 10)])
    taken = [await queue.take() for _ in range(4)]
    assert taken == [("a", 1), ("b", 10), ("a", 2), ("a", 3)]
    for _ in taken:
        queue.done()
    assert await queue.take() is None and len(queue) == 0
    assert clock.now == 0.0  # nothing had to wait


async def test_a_paused_provider_waits_while_others_go_on():
    queue, clock = stepped_queue([("a", 1), ("a", 2), ("b", 10), ("b", 11)])
    assert await queue.take() == ("a", 1)
    queue.pause("a", 5.0)
    queue.retry("a", 1, 0.0)
    assert [await queue.take(), await queue.take()] == [("b", 10), ("b", 11)]
    assert clock.now == 0.0  # b's items went at once
    queue.done()
    queue.done()
    # Only a's items are left, and a is paused: the next take waits until the pause ends.
    assert await queue.take() == ("a", 2)
    assert clock.now == 5.0


async def test_a_retry_comes_back_after_its_delay_and_close_ends_every_take():
    queue, clock = stepped_queue([("a", 1)])
    assert await queue.take() == ("a", 1)
    queue.retry("a", 1, 2.0)
    assert await queue.take() == ("a", 1)
    assert clock.sleeps == [2.0]
    queue.retry("a", 1, 10.0)
    assert queue.drain() == [1]
    queue.close()
    assert await queue.take() is None


# --- progress -------------------------------------------------------------------------------------


def operation(**fields) -> Operation:
    command = CancelMatchingCommand(Selector(providers=("openai",)))
    return Operation("operations/p", "admin", command, create_time=T0, update_time=T0, **fields)


def worker(store, now: float = T0, **policy) -> Worker:
    """This worker's side of operations in `store`, at a fixed time, with `policy` fields set."""
    return Worker(store, RUNTIMES, holder="w", timing=Timing(clock=lambda: now), policy=OperationPolicy(**policy))


@pytest.fixture
async def store(tmp_path):
    engine = SqliteOperationStore(tmp_path / "ops.sqlite3")
    yield engine
    await engine.close()


async def test_settled_batches_are_written_in_groups_and_counted(store):
    items = [BatchItem("openai", f"b{i}") for i in range(250)]
    op = operation()
    await store.create(op, items, "w", T0 + 60)
    progress = Progress(worker(store, flush_items=100, flush_seconds=30), op, items)
    saves = []
    original = store.save

    async def counting_save(*args, **kwargs):
        saves.append(len(args[3]) if len(args) > 3 else 0)
        await original(*args, **kwargs)

    store.save = counting_save
    for item in items[:250]:
        progress.set_outcome(item, CANCELLED)
    await progress.flush()
    assert sum(saves) == 250 and len(saves) <= 4  # groups of ~100, not one write per batch
    assert op.counts.cancel_accepted == 250 and op.counts.pending == 0
    assert {item.outcome for item in await store.items(op.name)} == {CANCELLED}
    assert (await store.get(op.name)).operation.counts.cancel_accepted == 250
    await progress.close()


async def test_a_mark_is_stored_before_it_returns_and_a_stop_refuses_it(store):
    item = BatchItem("openai", "b1")
    op = operation()
    await store.create(op, [item], "w", T0 + 60)
    progress = Progress(worker(store), op, [item])
    await progress.mark_sent(item)
    assert (await store.items(op.name))[0].cancel_sent
    second = BatchItem("openai", "b2")
    progress.items.append(second)
    await store.request_cancel(op.name)
    with pytest.raises(StopRequested):
        await progress.mark_sent(second)
    assert not second.cancel_sent and second.attempts == 0  # its cancel must not go out
    progress.set_outcome(second, SKIPPED)
    await progress.flush()  # what else was waiting is still written
    assert {i.batch_id: i.outcome for i in await store.items(op.name)} == {"b1": PENDING, "b2": SKIPPED}
    await progress.close()


async def test_a_lost_lease_fails_every_write_after_it(store):
    item = BatchItem("openai", "b1")
    op = operation()
    await store.create(op, [item], "w", T0 + 60)
    progress = Progress(worker(store, T0 + 61), op, [item])  # the lease expired
    with pytest.raises(LeaseLost):
        await progress.mark_sent(item)
    with pytest.raises(LeaseLost):
        await progress.flush()
    await progress.close()


# --- checks ---------------------------------------------------------------------------------------

CONFIG = parse_config(
    {
        "providers": {
            "openai": {"keys": [{"name": "k", "value": "sk-x", "use_for_batch_api": True}]},
            "anthropic": {"keys": [{"name": "k", "value": "sk-y", "use_for_batch_api": True}]},
        },
        "governance": {
            "virtual_keys": [
                {
                    "id": "ops",
                    "value": "sk-bf-ops",
                    "allow_cancel_matching": True,
                    "provider_configs": [{"provider": "openai"}],
                },
                {"id": "plain", "value": "sk-bf-plain", "provider_configs": [{"provider": "openai"}]},
                {"id": "gone", "value": "sk-bf-gone", "is_active": False, "allow_cancel_matching": True},
                {"id": "old", "value": "sk-bf-old", "expires_at": 1000, "allow_cancel_matching": True},
            ]
        },
        "operations": {"notify_urls": ["https://hooks.example.com/batchgate"], "notify_secret": "s"},
    },
    env={},
)
RUNTIME = RuntimeFactory.for_config(CONFIG).build(CONFIG, "unit")
RUNTIMES = SimpleNamespace(current=RUNTIME)  # what LiveConfig offers: the runtime current now
CANCELLER = RUNTIME.canceller
VKS = {vk.id: vk for vk in CONFIG.virtual_keys}


def command(**fields) -> CancelMatchingCommand:
    selector = fields.pop("selector", Selector())
    return CancelMatchingCommand(selector, **fields)


def test_defaults_fill_in_and_names_are_lowercased():
    cmd = normalized(command(selector=Selector(providers=(" OpenAI ", "openai"), statuses=("In_Progress",))))
    assert cmd.selector.providers == ("openai",) and cmd.selector.statuses == ("in_progress",)
    assert (cmd.max_batches, cmd.deadline_seconds) == (100, 3600)


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"selector": Selector(providers=("fireworks",))}, "selector.providers[0]"),
        ({"selector": Selector(providers=("openai",), metadata={"": "x"})}, "selector.metadata"),
        ({"selector": Selector(batches=(("", "openai"),))}, "selector.batches[0].id"),
        ({"selector": Selector(batches=(("b", " "),))}, "selector.batches[0].provider"),
        ({"selector": Selector(batches=(("b", "nope"),))}, "selector.batches[0].provider"),
        ({"notify_url": "https://hooks.example.com.evil.io/batchgate"}, "notify.url"),
    ],
)
def test_each_bad_request_names_its_field(fields, param):
    with pytest.raises(InvalidRequest) as info:
        check_request(command(**fields), CONFIG, CANCELLER)
    assert info.value.param == param


def test_who_may_start_what():
    selector = normalized(command(selector=Selector(providers=("openai",))))
    assert check_access(Caller("admin"), selector, CANCELLER) == ("openai",)
    assert check_access(Caller("vk:ops", VKS["ops"]), normalized(command()), CANCELLER) == ("openai",)
    with pytest.raises(PermissionDenied):
        check_access(Caller("vk:plain", VKS["plain"]), selector, CANCELLER)
    with pytest.raises(PermissionDenied):
        check_access(Caller("anonymous"), selector, CANCELLER)
    with pytest.raises(PermissionDenied):
        check_access(
            Caller("vk:ops", VKS["ops"]), normalized(command(selector=Selector(providers=("anthropic",)))), CANCELLER
        )
    named = normalized(command(selector=Selector(batches=(("b", "openai"),))))
    assert check_access(Caller("vk:plain", VKS["plain"]), named, CANCELLER) == ()
    with pytest.raises(InvalidRequest):  # a caller's own provider key cannot run in the background
        check_access(Caller("anonymous", direct_key="sk-own"), named, CANCELLER)


def test_an_operation_runs_as_its_creator_until_the_key_is_revoked():
    assert owner_caller("admin", CONFIG).identity == "admin"
    assert owner_caller("vk:ops", CONFIG).virtual_key is VKS["ops"]
    for key_id, reason in [("gone", "was deactivated"), ("old", "expired"), ("nobody", "was removed from the config")]:
        with pytest.raises(Unauthenticated) as info:
            owner_caller(f"vk:{key_id}", CONFIG, lambda: 2000.0)
        assert reason in info.value.message and info.value.status_code == 401


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example.com/batchgate", True),
        ("https://hooks.example.com/batchgate/team-a?x=1", True),
        ("https://HOOKS.example.com:443/batchgate/x", True),
        ("https://hooks.example.com/batchgate-evil", False),
        ("https://hooks.example.com.evil.io/batchgate", False),
        ("http://hooks.example.com/batchgate", False),
        ("https://hooks.example.com:8443/batchgate", False),
        ("https://user@hooks.example.com/batchgate", False),
        ("https://hooks.example.com/batchgate/../admin", False),
        ("https://hooks.example.com/batchgate/%2e%2e/admin", False),
        ("https://hooks.example.com/other", False),
        ("not a url", False),
    ],
)
def test_webhook_urls_must_start_with_an_allowed_prefix(url, allowed):
    assert CONFIG.operations.notify_allowed(url) is allowed


def test_a_prefix_without_a_path_allows_every_path_of_its_host_only():
    target = NotifyTarget("https", "hooks.example.com", 443, "")
    assert target.allows("https://hooks.example.com/anything")
    assert not target.allows("https://hooks.example.com.evil.io/anything")


@pytest.mark.parametrize(
    ("operations", "message"),
    [
        ({"notify_urls": ["https://h.example.com"]}, "operations.notify_secret: required when notify_urls is set"),
        ({"notify_urls": ["ftp://h.example.com"], "notify_secret": "s"}, "operations.notify_urls[0]: must be"),
        ({"notify_urls": ["https://h.example.com/?t=1"], "notify_secret": "s"}, "operations.notify_urls[0]: must be"),
        ({"notify_secret": "env.NO_SUCH_VAR"}, "environment variable NO_SUCH_VAR is not set"),
        ({"max_running_per_caller": 0}, "operations.max_running_per_caller: must be between 1 and 1000"),
        ({"lease_seconds": 0.5}, "operations.lease_seconds: must be between 1 and 300"),
        ({"retention_days": 3651}, "operations.retention_days: must be between 0 and 3650"),
        ({"retention_days": 1.5}, "operations.retention_days: expected an integer, got float"),
    ],
)
def test_the_operations_block_is_checked(operations, message):
    with pytest.raises(ConfigError) as info:
        parse_config({"operations": operations}, env={})
    assert message in str(info.value)


def test_allow_cancel_matching_is_a_boolean():
    block = {"virtual_keys": [{"value": "sk-bf-x", "allow_cancel_matching": "yes"}]}
    with pytest.raises(ConfigError) as info:
        parse_config({"governance": block}, env={})
    assert "governance.virtual_keys[0].allow_cancel_matching: expected true or false, got str" in str(info.value)
    assert (
        parse_config({"governance": {"virtual_keys": [{"value": "sk-bf-x"}]}}, env={})
        .virtual_keys[0]
        .allow_cancel_matching
        is False
    )


# --- proto and JSON -------------------------------------------------------------------------------


def finished(items: list[BatchItem], **fields) -> Operation:
    op = operation(state=DONE, done=True, **fields)
    op.counts = Counts.of(items)
    return op


ITEMS = [
    BatchItem(
        "openai",
        "b1",
        key_id="main",
        outcome=CANCELLED,
        state=BatchState("b1", "cancelling", RequestCounts(total=10, completed=2), cancelling_at=1800000000),
        latency_ms=4,
    ),
    BatchItem("openai", "b2", outcome=ALREADY_ENDED, state=BatchState("b2", "completed")),
    BatchItem(
        "openai",
        "b3",
        outcome=FAILED,
        error=Failure("No batch found with id 'b3'.", 404, "invalid_request_error", None, None, "openai", False),
    ),
]


def test_a_done_operation_answers_every_batch():
    message = operation_to_proto(finished(ITEMS), ITEMS)
    assert message.done and message.WhichOneof("result") == "response"
    answer = pb.CancelMatchingResult()
    assert message.response.Unpack(answer)
    assert [(b.id, b.outcome, b.key_id) for b in answer.batches] == [
        ("b1", "cancelled", "main"),
        ("b2", "already_ended", ""),
        ("b3", "failed", ""),
    ]
    assert answer.batches[0].batch.status == "cancelling" and answer.batches[0].batch.request_counts.total == 10
    assert answer.batches[2].error.status_code == 404 and not answer.batches[2].error.is_bifrost_error
    metadata = pb.CancelMatchingMetadata()
    assert message.metadata.Unpack(metadata)
    assert (metadata.matched, metadata.cancel_accepted, metadata.already_ended, metadata.failed) == (3, 1, 1, 1)
    assert metadata.created_by == "admin" and metadata.state == "done"


def test_errors_carry_their_code_their_detail_and_the_batches_they_kept():
    refused = finished([], error=Failure("matches 5 batches, more than max_batches 3; nothing was cancelled", 409))
    message = operation_to_proto(refused, [])
    assert message.error.code == 9 and message.error.message.startswith("matches 5 batches")
    assert [d.type_url.rsplit(".", 1)[-1] for d in message.error.details] == ["ErrorDetail"]
    stopped = finished(
        ITEMS, error=Failure("cancelled", 499, "cancelled", "operation_cancelled"), error_has_batches=True
    )
    message = operation_to_proto(stopped, ITEMS)
    assert message.error.code == 1
    assert [d.type_url.rsplit(".", 1)[-1] for d in message.error.details] == ["CancelMatchingResult", "ErrorDetail"]
    revoked = finished([], error=Failure("revoked", 401, "authentication_error", "virtual_key_revoked"))
    assert operation_to_proto(revoked, []).error.code == 16


def test_a_running_operation_has_no_result_and_a_list_leaves_batches_out():
    assert operation_to_proto(operation(), None).WhichOneof("result") is None
    assert operation_to_proto(finished(ITEMS), None).WhichOneof("result") is None


async def test_the_webhook_body_is_the_rest_json_with_proto_field_names():
    body = await operation_json(finished(ITEMS), ITEMS)
    data = json.loads(body)
    assert data["done"] is True and data["name"] == "operations/p"
    assert data["metadata"]["@type"] == "type.googleapis.com/batchgate.v1.CancelMatchingMetadata"
    assert data["metadata"]["cancel_accepted"] == 1 and data["metadata"]["validate_only"] is False
    assert data["response"]["batches"][0]["batch"]["request_counts"]["total"] == 10
    assert data["response"]["batches"][2]["error"]["error"]["message"] == "No batch found with id 'b3'."
    assert signature(body, "k") == "sha256=" + hmac.new(b"k", body, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("stopped", [False, True], ids=["response", "stopped with its batches"])
async def test_a_large_operation_rendered_a_part_at_a_time_is_what_rendering_at_once_gives(stopped):
    count = 2 * RENDER_PER_TURN + 7
    assert count > 2 * JSON_PER_TURN
    items = [
        BatchItem(i.provider, f"{i.batch_id}_{n}", i.key_id, i.outcome, i.state, i.latency_ms, i.warning, i.error)
        for n in range(count // len(ITEMS) + 1)
        for i in ITEMS
    ][:count]
    error = Failure("cancelled", 499, "cancelled", "operation_cancelled") if stopped else None
    op = finished(items, error=error, error_has_batches=stopped)
    at_once = operation_to_proto(op, items)
    in_parts = await render_operation(op, items)
    assert in_parts.SerializeToString(deterministic=True) == at_once.SerializeToString(deterministic=True)
    assert json.loads(await operation_json(op, items)) == json_format.MessageToDict(at_once, **JSON_OPTIONS)
    assert (await render_operation(op, None)).SerializeToString() == operation_to_proto(op, None).SerializeToString()


def test_the_request_is_read_as_sent():
    request = json_format.ParseDict(
        {
            "selector": {"providers": ["OpenAI"], "metadata": {"team": "x"}, "batches": [{"id": "b", "provider": "p"}]},
            "validate_only": True,
            "max_batches": 7,
            "notify": {"url": "https://h/x"},
        },
        pb.CancelMatchingRequest(),
    )
    cmd = matching_command(request)
    assert cmd.selector.providers == ("OpenAI",) and cmd.selector.batches == (("b", "p"),)
    assert (cmd.validate_only, cmd.max_batches, cmd.deadline_seconds, cmd.notify_url) == (True, 7, 0, "https://h/x")


def test_domain_records_round_trip():
    op = finished(ITEMS, error=Failure("x", 499), error_has_batches=True)
    assert Operation.from_dict(json.loads(json.dumps(op.to_dict()))) == op
    for item in ITEMS:
        assert BatchItem.from_dict(json.loads(json.dumps(item.to_dict()))) == item
    matched = BatchItem("openai", "b", outcome=MATCHED)
    assert Counts.of([matched]).matched == 1 and Counts.of([matched]).pending == 0


def test_backoff_and_result_labels():
    backoff = Backoff(first_s=1, max_s=8, jitter=0.5)
    assert [backoff.delay(n, lambda: 0.0) for n in (1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8]
    assert backoff.delay(3, lambda: 1.0) == 2.0
    assert [
        result_label(e) for e in (None, Failure("", 409), Failure("", 499), Failure("", 401), Failure("", 502))
    ] == [
        "ok",
        "failed_precondition",
        "cancelled",
        "unauthenticated",
        "error",
    ]


# --- the scheduler --------------------------------------------------------------------------------


class IdleRunner:
    """Stands in for a runner: runs until cancelled, records stop requests."""

    def __init__(self, name: str) -> None:
        self.name, self.operation, self.stops = name, None, 0

    async def run(self) -> None:
        await asyncio.Event().wait()

    def request_stop(self, failure=None) -> None:
        self.stops += 1

    def leave(self) -> None:
        pass


async def test_the_scheduler_renews_claims_and_lets_go(store):
    clock = SteppedClock(T0)
    runners: dict[str, IdleRunner] = {}

    def make(name: str) -> IdleRunner:
        runners[name] = IdleRunner(name)
        return runners[name]

    def on(holder: str) -> Worker:
        return Worker(store, RUNTIMES, holder=holder, timing=Timing(clock=clock))

    mine = Scheduler(on("w1"), make)
    theirs = Scheduler(on("w2"), make)
    await store.create(operation(), [], "w1", T0 + 15)
    mine.adopt("operations/p")
    clock.now = T0 + 10
    await mine.tick(15.0)  # renewed until T0 + 25
    clock.now = T0 + 20
    await theirs.tick(15.0)
    assert theirs.runner("operations/p") is None  # still leased
    await store.request_cancel("operations/p")
    await mine.tick(15.0)
    assert runners["operations/p"].stops == 1  # the request reaches the runner through the store
    clock.now = T0 + 40  # w1 stopped renewing: its lease ran out
    await theirs.tick(15.0)
    assert theirs.runner("operations/p") is not None and (await store.get("operations/p")).holder == "w2"
    await mine.tick(15.0)  # w1 learns it lost the lease and stops its runner at once
    await eventually(lambda: mine.runner("operations/p") is None)
    await theirs.shutdown(timeout=0.1)
    assert (await store.get("operations/p")).holder == ""  # released: another worker resumes at once


async def finished_on(store, name: str, age_days: float) -> None:
    op = operation(state=DONE, done=True)
    op.name, op.create_time = name, T0 - age_days * 86400
    await store.create(op, [BatchItem("openai", "b")], "w", T0 + 60)
    await store.save("w", T0, op)


async def test_the_scheduler_deletes_finished_operations_past_their_retention_once_an_hour(store):
    clock = SteppedClock(T0)
    scheduler = Scheduler(Worker(store, RUNTIMES, holder="w1", timing=Timing(clock=clock)), IdleRunner)
    await finished_on(store, "operations/old", 31)
    await finished_on(store, "operations/young", 29)
    await scheduler.tick(15.0)
    assert await store.get("operations/old") is None and await store.get("operations/young") is not None
    await finished_on(store, "operations/old-too", 31)
    clock.now = T0 + 3599
    await scheduler.tick(15.0)
    assert await store.get("operations/old-too") is not None  # looked for once an hour
    clock.now = T0 + 3600
    await scheduler.tick(15.0)
    assert await store.get("operations/old-too") is None and await store.get("operations/young") is not None
    assert CONFIG.operations.retention_days == 30


async def test_a_retention_of_zero_keeps_finished_operations(store):
    config = parse_config({"operations": {"retention_days": 0}}, env={})
    runtimes = SimpleNamespace(current=RuntimeFactory.for_config(config).build(config, "unit"))
    scheduler = Scheduler(Worker(store, runtimes, holder="w1", timing=Timing(clock=lambda: T0)), IdleRunner)
    await finished_on(store, "operations/ancient", 3000)
    await scheduler.tick(15.0)
    assert await store.get("operations/ancient") is not None


class ClaimHeld:
    """Delegates to a store; its `claim` waits until `go` is set (a store slow to answer)."""

    def __init__(self, store) -> None:
        self.store, self.claiming, self.go = store, asyncio.Event(), asyncio.Event()

    def __getattr__(self, name: str):
        return getattr(self.store, name)

    async def claim(self, *args):
        self.claiming.set()
        await self.go.wait()
        return await self.store.claim(*args)


async def test_a_shutdown_during_a_round_is_not_lost_in_the_wait_for_the_next_one(store):
    """The stop arrives while a round waits on the store: the loop must see it once the round ends,
    not sleep a third of the lease first (it did: every worker's stop took up to 5 s more, 100 s
    with this lease). The 30 s guard only keeps a regression from hanging the suite."""
    config = parse_config({"operations": {"lease_seconds": 300}}, env={})
    runtimes = SimpleNamespace(current=RuntimeFactory.for_config(config).build(config, "unit"))
    held = ClaimHeld(store)
    scheduler = Scheduler(Worker(held, runtimes, holder="w1", timing=Timing(clock=lambda: T0)), IdleRunner)
    scheduler.start()
    await held.claiming.wait()
    stopping = asyncio.ensure_future(scheduler.shutdown(timeout=1.0))
    await asyncio.sleep(0)  # the stop is asked for while the round still waits
    held.go.set()
    await asyncio.wait_for(stopping, timeout=30)


def test_envoys_descriptor_set_holds_every_type_an_answer_can_pack():
    """A type missing from the set turns the whole REST answer into a 502 (issue 27's traps)."""
    from google.protobuf import descriptor_pb2

    from gateway.paths import DESCRIPTOR

    files = descriptor_pb2.FileDescriptorSet()
    files.ParseFromString(DESCRIPTOR.read_bytes())
    names = {f"{f.package}.{m.name}" for f in files.file for m in f.message_type}
    services = {f"{f.package}.{s.name}" for f in files.file for s in f.service}
    assert {
        "batchgate.v1.CancelMatchingMetadata",
        "batchgate.v1.CancelMatchingResult",
        "batchgate.v1.ErrorDetail",
        "google.rpc.Status",
        "google.rpc.ErrorInfo",
        "google.rpc.RetryInfo",
        "google.longrunning.Operation",
    } <= names
    assert {"batchgate.v1.BatchService", "google.longrunning.Operations"} <= services
    # The canonical name, as googleapis-common-protos registers it in Python.
    assert "google/longrunning/operations.proto" in {f.name for f in files.file}
