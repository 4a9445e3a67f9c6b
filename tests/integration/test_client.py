"""The client library (client/batchgate_client) against a real batchgate service over real gRPC on
loopback, with the sandbox over real HTTP behind it: the blocking and the asyncio client, typed
results, every error kind, retries that never multiply upstream calls, `ok_if_ended`, CancelMany
with and without waiting (and over 1,000 items), virtual keys, TLS, and the command's exit codes.

Every test runs against both clients through one small adapter: the blocking client runs in a
worker thread, because the in-process server needs this event loop to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import logging
import re
import uuid
from pathlib import Path

import grpc
import pytest
from batchgate_client import (
    AsyncBatchgateClient,
    Batch,
    BatchgateClient,
    BatchRef,
    ClientClosed,
    Conflict,
    ConnectionFailed,
    DeadlineExceeded,
    InternalError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    RequestCounts,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    batch_to_dict,
)
from batchgate_client.cli import run
from batchgate_client.testing import retry_hooks

from gateway.paths import ROOT
from service.edge.server import Listener, create_server
from service.infra.providers.catalog import parse_config
from service.runtime.build import Collaborators, RuntimeFactory
from service.runtime.live import LiveConfig
from service.usecases.waiting import PollPolicy
from tests.integration.test_auth import VK_AZURE_ONLY, VK_LIMITED, VK_TEAM, governed
from tests.integration.test_reliability import SteppedClock
from tests.support import config_dict, self_signed_cert, settled

FAST_POLLS = PollPolicy(first_s=0.2, max_s=0.5)


def new_id() -> str:
    return f"batch_{uuid.uuid4().hex[:16]}"


class Adapter:
    """One async face for both clients. `pauses` records the retry pauses (no real sleeping)."""

    def __init__(self, kind: str, target: str, **kwargs) -> None:
        self.kind = kind
        self.pauses: list[float] = []
        also = kwargs.pop("sleep", None)  # called with each pause too (to move a test's clock)

        def record(seconds: float) -> None:
            self.pauses.append(seconds)
            if also is not None:
                also(seconds)

        if kind == "sync":
            self.client = retry_hooks(BatchgateClient(target, **kwargs), sleep=record)
        else:

            async def record_async(seconds: float) -> None:
                record(seconds)

            self.client = retry_hooks(AsyncBatchgateClient(target, **kwargs), sleep=record_async)

    async def cancel(self, *args, **kwargs):
        if self.kind == "sync":
            return await asyncio.to_thread(self.client.cancel, *args, **kwargs)
        return await self.client.cancel(*args, **kwargs)

    async def health(self, **kwargs):
        if self.kind == "sync":
            return await asyncio.to_thread(self.client.health, **kwargs)
        return await self.client.health(**kwargs)

    async def cancel_many(self, items, **kwargs) -> list:
        if self.kind == "sync":

            def collect() -> list:
                with self.client.cancel_many(items, **kwargs) as events:
                    return list(events)

            return await asyncio.to_thread(collect)
        async with self.client.cancel_many(items, **kwargs) as events:
            return [event async for event in events]

    async def close(self) -> None:
        if self.kind == "sync":
            self.client.close()
        else:
            await self.client.close()


@pytest.fixture(params=["sync", "async"])
def kind(request) -> str:
    return request.param


@pytest.fixture
async def connect(kind):
    """`connect(target, **client_kwargs)` -> an Adapter, closed after the test."""
    adapters: list[Adapter] = []

    def make(target: str, **kwargs) -> Adapter:
        adapters.append(Adapter(kind, target, **kwargs))
        return adapters[-1]

    yield make
    for adapter in adapters:
        await adapter.close()


@contextlib.asynccontextmanager
async def serving_app(config: dict, listener: Listener | None = None):
    """The service on an ephemeral port; yields it and its target."""
    app = await create_server(parse_config(config, env={}), listener or Listener())
    app.live.factory.waiting.policy = FAST_POLLS
    try:
        yield app, f"127.0.0.1:{app.port}"
    finally:
        await app.stop(grace=0)


@contextlib.asynccontextmanager
async def serving(config: dict, listener: Listener | None = None):
    async with serving_app(config, listener) as (_, target):
        yield target


@pytest.fixture
async def target(sandbox, sim):
    async with serving(config_dict(sandbox.url)) as address:
        yield address


@pytest.fixture
async def governed_target(sandbox, sim):
    async with serving(governed(sandbox.url, enforce_auth_on_inference=True)) as address:
        yield address


async def test_cancel_answers_the_batch(connect, target, sim):
    batch = sim.seed("openai", new_id(), request_counts={"total": 10, "completed": 4, "failed": 0})
    answer = await connect(target).cancel(batch.id, "openai")
    assert isinstance(answer, Batch)
    assert (answer.id, answer.status, answer.provider) == (batch.id, "cancelling", "openai")
    assert answer.request_counts == RequestCounts(total=10, completed=4, failed=0)  # the others not reported
    assert answer.cancelling_at is not None and answer.cancelled_at is None and answer.warning is None
    body = batch_to_dict(answer)
    assert body == answer.to_dict() and body["request_counts"] == {"total": 10, "completed": 4, "failed": 0}
    assert body["extra_fields"]["request_type"] == "batch_cancel"


async def test_cancel_with_wait_answers_once_the_batch_is_cancelled(connect, target, sim):
    batch = sim.seed("openai", new_id(), cancel_delay_s=0.3)
    answer = await connect(target).cancel(batch.id, "openai", wait_seconds=10)
    assert answer.status == "cancelled" and answer.terminal and answer.cancelled_at is not None
    assert answer.warning is None


async def test_health_lists_each_configured_providers_circuit(connect, target):
    health = await connect(target).health()
    assert health.status == "ok"
    assert {name: p.circuit for name, p in health.providers.items()} == {"openai": "closed", "azure": "closed"}
    assert health.config is not None and health.config.worker == 0 and health.to_dict()["config"]["worker"] == 0


async def test_a_draining_service_answers_health_with_unavailable_draining(connect, sandbox):
    async with serving_app(config_dict(sandbox.url)) as (app, address):
        app.servicer.draining = True
        client = connect(address)
        with pytest.raises(Unavailable) as info:
            await client.health()
        assert (info.value.code, info.value.status_code) == ("draining", 503)
        assert client.pauses == []  # an answer: the service is draining
        out = io.StringIO()
        assert await asyncio.to_thread(run, ["--target", address, "health"], stdout=out, stderr=io.StringIO()) == 1
        assert out.getvalue() == f"batchgate at {address}: draining\n"


@pytest.mark.parametrize(
    ("case", "error_class", "status_code", "code"),
    [
        ("unknown provider", InvalidRequest, 400, None),
        ("unsafe id", InvalidRequest, 400, None),
        ("no such batch", NotFound, 404, None),
        ("finished batch", Conflict, 409, None),
    ],
)
async def test_each_error_kind_is_its_own_class_with_the_error_detail(
    connect, target, sim, case, error_class, status_code, code
):
    batch_id, provider = new_id(), "openai"
    if case == "unknown provider":
        provider = "nosuchprovider"
    elif case == "unsafe id":
        batch_id = "../etc/passwd"
    elif case == "finished batch":
        sim.seed("openai", batch_id, status="completed")
    client = connect(target)
    with pytest.raises(error_class) as info:
        await client.cancel(batch_id, provider)
    err = info.value
    assert err.status_code == status_code
    assert err.message and err.type and err.detail is not None
    assert err.grpc_code == error_class.grpc_code
    assert err.request_id  # the service's x-request-id
    if case in ("no such batch", "finished batch"):
        assert (err.provider, err.is_bifrost_error) == ("openai", False)  # the provider's own answer
    assert client.pauses == []  # an answer is never retried
    assert err.to_dict()["error"]["message"] == err.message


async def test_each_call_sends_a_request_id_of_the_clients(connect, target, sim, caplog):
    # The service logs the id it was sent (kept across a call's retries: see the circuit test).
    caplog.set_level(logging.INFO, logger="batchgate.access")
    client = connect(target)
    await client.cancel(sim.seed("openai", new_id()).id, "openai")
    with pytest.raises(NotFound) as info:
        await client.cancel("missing_batch_1", "openai")
    first, failed = [r.fields["request_id"] for r in caplog.records if r.name == "batchgate.access"]
    assert re.fullmatch(r"[0-9a-f]{32}", first)
    assert failed == info.value.request_id != first


async def test_a_request_id_given_in_metadata_is_the_one_sent(connect, target, sim):
    client = connect(target, metadata=[("x-request-id", "trace-0042")])
    with pytest.raises(NotFound) as info:
        await client.cancel("missing_batch_2", "openai")
    assert info.value.request_id == "trace-0042"
    events = await client.cancel_many([("missing_batch_3", "openai")])
    assert events[0].error.request_id == "trace-0042"


async def test_unauthenticated_without_a_virtual_key(connect, governed_target, sim):
    with pytest.raises(Unauthenticated) as info:
        await connect(governed_target).cancel(sim.seed("openai", new_id()).id, "openai")
    assert (info.value.status_code, info.value.code) == (401, "virtual_key_required")
    assert sim.calls() == []


async def test_the_virtual_key_is_sent_on_every_call(connect, governed_target, sim):
    batch = sim.seed("openai", new_id())
    client = connect(governed_target, vk=VK_TEAM)
    assert (await client.cancel(batch.id, "openai")).status == "cancelling"
    events = await client.cancel_many([(sim.seed("openai", new_id()).id, "openai")])
    assert [e.status for e in events] == ["cancelling"]
    assert VK_TEAM not in repr(client.client)


async def test_permission_denied_for_a_provider_outside_the_keys_scope(connect, governed_target, sim):
    with pytest.raises(PermissionDenied) as info:
        await connect(governed_target, vk=VK_AZURE_ONLY).cancel(sim.seed("openai", new_id()).id, "openai")
    assert (info.value.status_code, info.value.code, info.value.provider) == (403, "provider_blocked", "openai")


async def test_rate_limited_carries_retry_after(connect, governed_target, sim):
    client = connect(governed_target, vk=VK_LIMITED)
    for _ in range(2):
        await client.cancel(sim.seed("openai", new_id()).id, "openai")
    with pytest.raises(RateLimited) as info:
        await client.cancel(sim.seed("openai", new_id()).id, "openai")
    assert (info.value.status_code, info.value.code) == (429, "rate_limited")
    assert 0 < info.value.retry_after <= 60
    assert client.pauses == []


async def test_a_provider_down_is_not_retried_on_top_of_the_services_retries(connect, target, sim):
    # The service already retried per key (max_retries 0 here: one call); the client adds none, so a
    # provider that is down sees exactly what the service sends (before: 3 times as many).
    batch = sim.seed("openai", new_id())
    sim.add_fault("openai", {"status": 503, "count": 10})
    client = connect(target, retry=RetryPolicy(attempts=3, initial_backoff=0.1, jitter=0))
    with pytest.raises(Unavailable) as info:
        await client.cancel(batch.id, "openai")
    assert not isinstance(info.value, ConnectionFailed) and info.value.detail is not None
    assert info.value.status_code == 503 and not info.value.retryable
    assert client.pauses == []
    assert len(sim.calls("openai")) == 1
    events = await client.cancel_many([(batch.id, "openai")])
    assert [type(e.error) for e in events] == [Unavailable] and len(sim.calls("openai")) == 2


async def test_an_open_circuit_is_retried_after_its_retry_after_with_one_probe(connect, sandbox, sim, caplog):
    """batchgate refuses while a provider's circuit is open (503 circuit_open, Retry-After) without
    calling it: the client waits that long and tries again, and the retry is the one probe. The
    client's pauses move the breaker's clock, so nothing really sleeps."""
    clock = SteppedClock()
    cfg = config_dict(sandbox.url)
    cfg["providers"]["openai"]["network_config"]["circuit_breaker"] = {"failure_threshold": 2, "open_seconds": 5}
    parsed = parse_config(cfg, env={})
    live = LiveConfig(parsed, factory=RuntimeFactory.for_config(parsed, Collaborators(clock=clock)))
    app = await create_server(live)
    try:
        client = connect(f"127.0.0.1:{app.port}", sleep=lambda seconds: setattr(clock, "now", clock.now + seconds))
        sim.add_fault("openai", {"status": 500, "count": 2})
        for _ in range(2):
            with pytest.raises(InternalError):
                await client.cancel(sim.seed("openai", new_id()).id, "openai")
        before = len(sim.calls("openai"))
        caplog.set_level(logging.INFO, logger="batchgate.access")
        batch = await client.cancel(sim.seed("openai", new_id()).id, "openai")
        assert batch.status == "cancelling"
        assert len(client.pauses) == 1 and client.pauses[0] >= 5  # the Retry-After, not the backoff
        assert len(sim.calls("openai")) == before + 1  # the refusal called nobody; the probe once
        refused, probe = [r.fields["request_id"] for r in caplog.records if r.name == "batchgate.access"]
        assert refused == probe  # one call, one request id across its attempts
    finally:
        await app.stop(grace=0)


async def test_ok_if_ended_turns_an_ended_batch_into_its_state(connect, target, sim):
    done = sim.seed("openai", new_id(), status="completed")
    client = connect(target)
    with pytest.raises(Conflict):
        await client.cancel(done.id, "openai")
    batch = await client.cancel(done.id, "openai", ok_if_ended=True)
    assert (batch.id, batch.provider, batch.status, batch.already_ended, batch.terminal) == (
        done.id,
        "openai",
        "ended",
        True,
        True,
    )
    assert batch.warning == "already ended: Cannot cancel a batch with status 'completed'."
    with pytest.raises(NotFound):  # only "already ended" is settled
        await client.cancel("missing_ended_1", "openai", ok_if_ended=True)
    events = await client.cancel_many([(done.id, "openai"), ("missing_ended_2", "openai")], ok_if_ended=True)
    by_index = {e.index: e for e in events}
    assert (by_index[0].status, by_index[0].ok, by_index[0].batch.already_ended) == ("ended", True, True)
    assert isinstance(by_index[1].error, NotFound)


async def test_cancel_many_splits_a_long_list_and_keeps_each_items_position(connect, target, sim, caplog):
    caplog.set_level(logging.INFO, logger="batchgate.access")
    items = [(sim.seed("openai", new_id()).id, "openai") for _ in range(1001)]
    events = await connect(target).cancel_many(items)
    assert sorted(e.index for e in events) == list(range(1001))
    assert all(e.id == items[e.index][0] and e.status == "cancelling" for e in events)
    calls = [r.fields["items"] for r in caplog.records if r.name == "batchgate.access" and "items" in r.fields]
    assert calls == [1000, 1]


async def test_a_closed_client_raises_client_closed(connect, target, sim):
    client = connect(target)
    await client.cancel(sim.seed("openai", new_id()).id, "openai")
    await client.close()
    with pytest.raises(ClientClosed):
        await client.cancel(sim.seed("openai", new_id()).id, "openai")


async def test_deadline_exceeded_when_the_call_outlives_its_timeout(connect, target, sim):
    batch = sim.seed("openai", new_id())
    sim.add_fault("openai", {"latency_ms": 2000})
    client = connect(target)
    with pytest.raises(DeadlineExceeded) as info:
        await client.cancel(batch.id, "openai", timeout=0.3)
    assert info.value.status_code == 504 and client.pauses == []


async def test_connection_failed_when_nothing_listens(connect):
    with contextlib.closing(__import__("socket").socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"127.0.0.1:{sock.getsockname()[1]}"  # bound, never listening
        client = connect(dead, retry=RetryPolicy(attempts=2, initial_backoff=0.01))
        with pytest.raises(ConnectionFailed) as info:
            await client.cancel("batch_1", "openai")
    assert isinstance(info.value, Unavailable) and info.value.detail is None
    assert info.value.grpc_code == grpc.StatusCode.UNAVAILABLE
    assert not info.value.request_sent and info.value.retryable  # nothing was sent: retried
    assert len(client.pauses) == 1


async def test_cancel_many_streams_each_items_result_and_errors_as_exceptions(connect, target, sim):
    ok = sim.seed("openai", new_id())
    done = sim.seed("openai", new_id(), status="completed")
    items = [
        BatchRef(ok.id, "openai"),
        {"id": "missing_1", "provider": "openai"},
        (done.id, "openai"),
        (new_id(), "nosuchprovider"),
    ]
    events = await connect(target).cancel_many(items)
    assert sorted(e.index for e in events) == [0, 1, 2, 3] and all(e.final for e in events)
    by_index = {e.index: e for e in events}
    assert (by_index[0].id, by_index[0].status, by_index[0].ok) == (ok.id, "cancelling", True)
    assert [type(by_index[i].error) for i in (1, 2, 3)] == [NotFound, Conflict, InvalidRequest]
    assert by_index[1].error.request_id  # the call's request id
    line = by_index[1].to_dict()
    assert line["error"]["status_code"] == 404 and "batch" not in line
    assert by_index[0].to_dict()["batch"]["status"] == "cancelling"


async def test_cancel_many_with_wait_ends_each_item_cancelled(connect, target, sim):
    ids = [sim.seed("openai", new_id(), cancel_delay_s=0.3).id for _ in range(3)]
    events = await connect(target).cancel_many([(i, "openai") for i in ids], wait_seconds=10)
    finals = {e.index: e.status for e in events if e.final}
    assert finals == {0: "cancelled", 1: "cancelled", 2: "cancelled"}
    assert any(not e.final and e.status == "cancelling" for e in events)  # a line after each cancel call


async def test_cancel_many_refuses_a_bad_call_as_a_whole(connect, target):
    with pytest.raises(InvalidRequest):  # an empty id: the service's check, for the whole call
        await connect(target).cancel_many([("", "openai")])
    with pytest.raises(ValueError):  # the client's own checks, before any call
        await connect(target).cancel_many([])
    with pytest.raises(ValueError):
        await connect(target).cancel_many([("b1", "openai")], wait_seconds=3601)


async def test_leaving_cancel_many_early_cancels_the_call(target, sim):
    """Breaking out of the blocking iterator cancels the stream; the service stops reading the
    batches back (no upstream call afterwards)."""
    ids = [sim.seed("openai", new_id(), cancel_delay_s=3600).id for _ in range(2)]

    client = BatchgateClient(target)
    try:
        events = client.cancel_many([(i, "openai") for i in ids], wait_seconds=60)
        first = await asyncio.to_thread(next, events)
        await asyncio.to_thread(events.close)  # the channel stays open: closing the iterator is what cancels
        assert not first.final
        # The service ends the call, and with it the reads (left alone they would go on for the
        # 60 s wait): once it has, no read can follow.
        await settled()
    finally:
        client.close()


async def test_leaving_the_async_cancel_many_early_cancels_the_call(target, sim):
    ids = [sim.seed("openai", new_id(), cancel_delay_s=3600).id for _ in range(2)]
    async with AsyncBatchgateClient(target) as client:
        # The 0.1 README's pattern (contextlib.aclosing) still works; `async with` the stream does too.
        async with contextlib.aclosing(client.cancel_many([(i, "openai") for i in ids], wait_seconds=60)) as events:
            first = await anext(events)
        assert not first.final
        await settled()  # as above: the call and its reads ended


async def test_tls_with_the_servers_ca(connect, sandbox, sim, tmp_path: Path):
    cert, key = self_signed_cert(tmp_path)
    async with serving(config_dict(sandbox.url), Listener(tls=(key.read_bytes(), cert.read_bytes()))) as address:
        batch = sim.seed("openai", new_id())
        assert (await connect(address, tls_ca=cert).cancel(batch.id, "openai")).status == "cancelling"
        with pytest.raises(ConnectionFailed):
            await connect(address, retry=RetryPolicy(attempts=1)).cancel(batch.id, "openai")  # plaintext
        with pytest.raises(ValueError, match="tls_ca is empty"):  # never the system's roots instead
            connect(address, tls_ca=b"")


async def test_the_type_checked_example_program_runs(target, sim, capsys):
    """client/examples/typed_usage.py is what `make lint` type-checks; here it runs, both clients,
    cancel by name as operations included."""
    spec = importlib.util.spec_from_file_location("typed_usage", ROOT / "client" / "examples" / "typed_usage.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    ids = [sim.seed("openai", new_id()).id for _ in range(4)]
    assert await asyncio.to_thread(example.main, target, ids) == 0
    out = capsys.readouterr().out
    assert f"{ids[0]} on openai: cancelling" in out and "not found: 404" in out and "openai closed" in out
    # Then both clients stop all four by name: a dry run matches them (it reads nothing), each real
    # run is accepted again (the sandbox keeps them `cancelling`).
    assert f"openai {ids[0]}  matched None" in out
    assert out.count(f"openai {ids[3]} main cancelled cancelling") == 2
