"""The client library (client/batchgate_client) against a real batchgate service over real gRPC on
loopback, with the sandbox over real HTTP behind it: the blocking and the asyncio client, every
error kind, the retry on UNAVAILABLE, CancelMany with and without waiting, virtual keys and TLS.

Every test runs against both clients through one small adapter: the blocking client runs in a
worker thread, because the in-process server needs this event loop to answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import uuid
from pathlib import Path

import grpc
import pytest
from batchgate_client import (
    AsyncBatchgateClient,
    BatchgateClient,
    BatchRef,
    Conflict,
    ConnectionFailed,
    DeadlineExceeded,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    RetryPolicy,
    Unauthenticated,
    Unavailable,
    batch_to_dict,
)
from batchgate_client.cli import run

from service.edge.server import Listener, create_server
from service.infra.providers.catalog import parse_config
from service.usecases.waiting import PollPolicy
from tests.integration.test_auth import VK_AZURE_ONLY, VK_LIMITED, VK_TEAM, governed
from tests.support import config_dict, self_signed_cert

FAST_POLLS = PollPolicy(first_s=0.2, max_s=0.5)


def new_id() -> str:
    return f"batch_{uuid.uuid4().hex[:16]}"


class Adapter:
    """One async face for both clients. `pauses` records the retry pauses (no real sleeping)."""

    def __init__(self, kind: str, target: str, **kwargs) -> None:
        self.kind = kind
        self.pauses: list[float] = []
        if kind == "sync":
            self.client = BatchgateClient(target, sleep=self.pauses.append, **kwargs)
        else:

            async def record(seconds: float) -> None:
                self.pauses.append(seconds)

            self.client = AsyncBatchgateClient(target, sleep=record, **kwargs)

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
            return await asyncio.to_thread(lambda: list(self.client.cancel_many(items, **kwargs)))
        return [event async for event in self.client.cancel_many(items, **kwargs)]

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
    assert (answer.id, answer.status, answer.extra_fields.provider) == (batch.id, "cancelling", "openai")
    body = batch_to_dict(answer)
    assert body["request_counts"] == {"total": 10, "completed": 4, "failed": 0}
    assert body["extra_fields"]["request_type"] == "batch_cancel"


async def test_cancel_with_wait_answers_once_the_batch_is_cancelled(connect, target, sim):
    batch = sim.seed("openai", new_id(), cancel_delay_s=0.3)
    answer = await connect(target).cancel(batch.id, "openai", wait_seconds=10)
    assert answer.status == "cancelled"
    assert not answer.extra_fields.HasField("warning")


async def test_health_lists_each_configured_providers_circuit(connect, target):
    health = await connect(target).health()
    assert health.status == "ok"
    assert {name: p.circuit for name, p in health.providers.items()} == {"openai": "closed", "azure": "closed"}


async def test_a_draining_service_answers_health_with_unavailable_draining(connect, sandbox):
    async with serving_app(config_dict(sandbox.url)) as (app, address):
        app.servicer.draining = True
        client = connect(address)
        with pytest.raises(Unavailable) as info:
            await client.health()
        assert (info.value.code, info.value.status_code) == ("draining", 503)
        assert len(client.pauses) == 2  # UNAVAILABLE: retried, then raised
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


async def test_a_call_and_its_retries_send_one_request_id_of_the_clients(connect, target, sim, caplog):
    # The service logs the id it was sent; one it generated itself would differ per attempt.
    caplog.set_level(logging.INFO, logger="batchgate.access")
    sim.add_fault("openai", {"status": 503})
    client = connect(target)
    await client.cancel(sim.seed("openai", new_id()).id, "openai")
    with pytest.raises(NotFound) as info:
        await client.cancel("missing_batch_1", "openai")
    first, retried, failed = [r.fields["request_id"] for r in caplog.records if r.name == "batchgate.access"]
    assert first == retried and re.fullmatch(r"[0-9a-f]{32}", first)
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


async def test_unavailable_is_retried_a_few_times_then_raised(connect, target, sim):
    batch = sim.seed("openai", new_id())
    sim.add_fault("openai", {"status": 503, "count": 10})
    client = connect(target, retry=RetryPolicy(attempts=3, initial_backoff=0.1, jitter=0))
    with pytest.raises(Unavailable) as info:
        await client.cancel(batch.id, "openai")
    assert not isinstance(info.value, ConnectionFailed) and info.value.detail is not None
    assert info.value.status_code == 503
    assert client.pauses == [0.1, 0.2]  # exponential backoff between the three attempts
    assert len(sim.calls("openai")) == 3  # the config has max_retries 0: one upstream call per attempt


async def test_unavailable_once_then_the_retry_succeeds(connect, target, sim):
    batch = sim.seed("openai", new_id())
    sim.add_fault("openai", {"status": 503})
    client = connect(target)
    assert (await client.cancel(batch.id, "openai")).status == "cancelling"
    assert len(client.pauses) == 1 and 0 < client.pauses[0] <= 0.3


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
    with pytest.raises(InvalidRequest):
        await connect(target).cancel_many([])
    with pytest.raises(InvalidRequest):
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
        await asyncio.sleep(0.3)
        settled = len(sim.calls("openai"))
        await asyncio.sleep(1.2)  # several poll intervals of FAST_POLLS
        assert len(sim.calls("openai")) == settled
    finally:
        client.close()


async def test_leaving_the_async_cancel_many_early_cancels_the_call(target, sim):
    ids = [sim.seed("openai", new_id(), cancel_delay_s=3600).id for _ in range(2)]
    async with AsyncBatchgateClient(target) as client:
        async with contextlib.aclosing(client.cancel_many([(i, "openai") for i in ids], wait_seconds=60)) as events:
            first = await anext(events)
        assert not first.final
        await asyncio.sleep(0.3)
        settled = len(sim.calls("openai"))
        await asyncio.sleep(1.2)
        assert len(sim.calls("openai")) == settled


async def test_tls_with_the_servers_ca(connect, sandbox, sim, tmp_path: Path):
    cert, key = self_signed_cert(tmp_path)
    async with serving(config_dict(sandbox.url), Listener(tls=(key.read_bytes(), cert.read_bytes()))) as address:
        batch = sim.seed("openai", new_id())
        assert (await connect(address, tls_ca=cert).cancel(batch.id, "openai")).status == "cancelling"
        with pytest.raises(ConnectionFailed):
            await connect(address, retry=RetryPolicy(attempts=1)).cancel(batch.id, "openai")  # plaintext
