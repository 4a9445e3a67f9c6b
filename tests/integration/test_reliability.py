"""Reliability under injected faults, over real gRPC against the in-process sandbox over real HTTP:
retries per fault type (counting upstream attempts), Retry-After, per-key failover, malformed
answers, follow-up read failures, deadlines, a caller that goes away, overload and the circuit
breaker. Timeouts and backoffs are tiny so the whole file runs in a few seconds. The logic itself
(backoff, Retry-After, breaker states, admission) has unit tests with injected clocks
(tests/unit/test_retry.py, test_resilience.py); these check it end to end, and the breaker's clock
is stepped here too rather than slept through."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from sandbox.google import GeminiSim, reset_options
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.infra.providers.catalog import parse_config
from service.runtime.build import Collaborators, RuntimeFactory
from service.runtime.live import LiveConfig
from tests.support import OPENAI_KEYS, eventually, running_service, settled

MiB = 1 << 20


def new_id() -> str:
    return f"batch_{uuid.uuid4().hex[:16]}"


def error_detail(err: grpc.aio.AioRpcError) -> pb.ErrorDetail:
    """The typed Bifrost error detail every non-OK status carries."""
    status = rpc_status.from_call(err)
    assert status is not None, "no grpc-status-details-bin on the error"
    detail = pb.ErrorDetail()
    assert status.details[0].Unpack(detail)
    return detail


def config(
    sandbox_url: str,
    *,
    keys: int = 1,
    max_retries: int = 2,
    backoff_ms: int = 1,
    backoff_max_ms: int = 5,
    timeout_s: float = 3.0,
    breaker: dict | None = None,
    limits: dict | None = None,
) -> dict:
    """OpenAI (one or two batch keys) and Gemini (a cancel with a follow-up read) against the sandbox,
    with the same small network settings."""
    network = {
        "max_retries": max_retries,
        "retry_backoff_initial_ms": backoff_ms,
        "retry_backoff_max_ms": backoff_max_ms,
        "default_request_timeout_in_seconds": timeout_s,
    }
    if breaker is not None:
        network["circuit_breaker"] = breaker
    openai = {
        "keys": [{"name": f"k{i}", "value": OPENAI_KEYS[i], "use_for_batch_api": True} for i in range(keys)],
        "network_config": {"base_url": f"{sandbox_url}/openai", **network},
    }
    if limits is not None:
        openai["concurrency_and_buffer_size"] = limits
    gemini = {
        "keys": [{"name": "g", "value": GeminiSim.default_key, "use_for_batch_api": True}],
        "network_config": {"base_url": f"{sandbox_url}/gemini", **network},
    }
    return {"providers": {"openai": openai, "gemini": gemini}}


async def cancel(stub, batch_id: str, provider: str = "openai", timeout: float | None = None) -> pb.BatchCancelResponse:
    return await stub.Cancel(pb.CancelBatchRequest(batch_id=batch_id, provider=provider), timeout=timeout)


async def cancel_error(stub, batch_id: str, provider: str = "openai", timeout: float | None = None):
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await cancel(stub, batch_id, provider, timeout)
    return info.value


def upstream_answers(result: str, provider: str = "openai") -> float:
    """The service's count of upstream cancel answers of a class (`4xx`...): it moves once the
    service has read an answer, which the simulator's own record of the call does not show."""
    labels = {"provider": provider, "operation": "cancel", "result": result}
    return REGISTRY.get_sample_value("batchgate_upstream_attempts_total", labels) or 0.0


def attempts(sim, batch_id: str, provider: str = "openai") -> list[dict]:
    return [call for call in sim.calls(provider) if batch_id in call["path"]]


async def still_serving(stub, sim) -> None:
    """A plain cancel still works after whatever the test did (faults left queued are dropped)."""
    while sim.next_fault("openai") is not None:
        pass
    batch = sim.seed("openai", new_id(), cancel_delay_s=3600)
    assert (await cancel(stub, batch.id, timeout=3)).status == "cancelling"


@pytest.fixture
async def service(sandbox, sim):
    async with running_service(config(sandbox.url)) as (app, stub):
        yield stub


@pytest.fixture
def seeded(sim):
    return sim.seed("openai", new_id(), cancel_delay_s=3600).id


# --- retries per fault type ----------------------------------------------------------------------------

RETRIED_STATUSES = [408, 429, 500, 502, 503, 504, 529]


@pytest.mark.parametrize("status", RETRIED_STATUSES)
async def test_retry_transient_status_then_success(service, sim, seeded, status):
    sim.add_fault("openai", {"status": status, "count": 2})

    response = await cancel(service, seeded, timeout=3)

    assert response.status == "cancelling"
    assert len(attempts(sim, seeded)) == 3  # two failures + the success


@pytest.mark.parametrize("status", RETRIED_STATUSES)
async def test_retry_transient_status_exhausted_returns_provider_answer(service, sim, seeded, status):
    sim.add_fault("openai", {"status": status, "count": 5})

    err = await cancel_error(service, seeded, timeout=3)

    assert len(attempts(sim, seeded)) == 3  # 1 try + max_retries 2, never more
    detail = error_detail(err)
    assert detail.status_code == status
    assert detail.is_bifrost_error is False
    assert sim.batch("openai", seeded).status == "in_progress"


async def test_retry_connection_reset_then_success(service, sim, seeded):
    sim.add_fault("openai", {"reset": True})

    response = await cancel(service, seeded, timeout=3)

    assert response.status == "cancelling"
    assert len(attempts(sim, seeded)) == 2


async def test_retry_connection_reset_exhausted_is_unavailable(service, sim, seeded):
    sim.add_fault("openai", {"reset": True, "count": 5})

    err = await cancel_error(service, seeded, timeout=3)

    assert err.code() == grpc.StatusCode.UNAVAILABLE
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code) == (502, "upstream_unavailable")
    assert detail.error.message.startswith("could not reach openai")
    assert len(attempts(sim, seeded)) == 3
    await still_serving(service, sim)


async def test_retry_html_bad_gateway_page_exhausted_is_502(service, sim, seeded):
    sim.add_fault("openai", {"html": True, "count": 5})

    err = await cancel_error(service, seeded, timeout=3)

    assert err.code() == grpc.StatusCode.UNAVAILABLE
    detail = error_detail(err)
    assert detail.status_code == 502
    assert "<html" not in detail.error.message.lower()  # the page is never passed on as a message
    assert len(attempts(sim, seeded)) == 3


async def test_retry_after_honoured_when_it_fits_the_deadline(service, sim, seeded):
    sim.add_fault("openai", {"status": 429, "retry_after": 0.3})
    started = time.monotonic()

    response = await cancel(service, seeded, timeout=3)

    assert response.status == "cancelling"
    first, second = attempts(sim, seeded)
    assert second["at"] - first["at"] >= 0.28, "Retry-After 0.3 s was not waited"
    assert time.monotonic() - started < 1.5


async def test_retry_after_not_waited_when_it_does_not_fit_the_deadline(service, sim, seeded):
    sim.add_fault("openai", {"status": 429, "retry_after": 30, "count": 3})
    started = time.monotonic()

    err = await cancel_error(service, seeded, timeout=10)

    elapsed = time.monotonic() - started
    assert elapsed < 5, f"waited {elapsed:.2f}s for a Retry-After that cannot fit the 10 s deadline"
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_detail(err).status_code == 429
    assert len(attempts(sim, seeded)) == 1


async def test_retry_none_when_max_retries_is_zero(sandbox, sim, seeded):
    async with running_service(config(sandbox.url, max_retries=0)) as (_, stub):
        sim.add_fault("openai", {"status": 503, "count": 3})
        err = await cancel_error(stub, seeded, timeout=3)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert len(attempts(sim, seeded)) == 1


# --- final answers and key failover ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (400, grpc.StatusCode.INVALID_ARGUMENT),
        (404, grpc.StatusCode.NOT_FOUND),
        (409, grpc.StatusCode.FAILED_PRECONDITION),
        (422, grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_final_status_never_retried_single_key(service, sim, seeded, status, code):
    sim.add_fault("openai", {"status": status, "count": 3})

    err = await cancel_error(service, seeded, timeout=3)

    assert err.code() == code
    assert error_detail(err).status_code == status
    assert len(attempts(sim, seeded)) == 1


@pytest.mark.parametrize("status", [400, 409, 422])
async def test_final_status_never_tries_the_next_key(sandbox, sim, seeded, status):
    async with running_service(config(sandbox.url, keys=2)) as (_, stub):
        sim.add_fault("openai", {"status": status, "count": 3})
        err = await cancel_error(stub, seeded, timeout=3)
    assert error_detail(err).status_code == status
    (call,) = attempts(sim, seeded)
    assert call["headers"]["Authorization"] == f"Bearer {OPENAI_KEYS[0]}"


async def test_not_found_tries_the_next_key_once_each(sandbox, sim, seeded):
    # A 404 is about this key's account (the batch may live under another key): one try per key.
    async with running_service(config(sandbox.url, keys=2)) as (_, stub):
        sim.add_fault("openai", {"status": 404, "count": 3})
        err = await cancel_error(stub, seeded, timeout=3)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    calls = attempts(sim, seeded)
    assert [c["headers"]["Authorization"] for c in calls] == [f"Bearer {k}" for k in OPENAI_KEYS]


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_moves_to_next_key(sandbox, sim, seeded, status):
    async with running_service(config(sandbox.url, keys=2)) as (_, stub):
        sim.add_fault("openai", {"status": status})
        response = await cancel(stub, seeded, timeout=3)
    assert response.status == "cancelling"
    calls = attempts(sim, seeded)
    assert [c["headers"]["Authorization"] for c in calls] == [f"Bearer {k}" for k in OPENAI_KEYS]


@pytest.mark.parametrize("status", [401, 403])
async def test_auth_failure_on_every_key_is_not_retried(sandbox, sim, seeded, status):
    async with running_service(config(sandbox.url, keys=2)) as (_, stub):
        sim.add_fault("openai", {"status": status, "count": 5})
        err = await cancel_error(stub, seeded, timeout=3)
    assert error_detail(err).status_code == status
    assert len(attempts(sim, seeded)) == 2  # once per key


# --- malformed upstream answers -------------------------------------------------------------------------

MALFORMED = {
    "truncated json": {"malformed": True},
    "truncated json body": {"status": 200, "body": '{"id": "b", "object": "batch", "sta'},
    "html page with 200": {"status": 200, "body": "<html><body>oops</body></html>", "content_type": "text/html"},
    "html without content type": {"status": 200, "body": "<!doctype html><p>hi", "content_type": "text/plain"},
    "json array": {"status": 200, "body": "[]"},
    "json string": {"status": 200, "body": '"str"'},
    "json null": {"status": 200, "body": "null"},
    "json number": {"status": 200, "body": "42"},
    "object without status": {"status": 200, "body": '{"id": "b", "object": "batch"}'},
    "status of the wrong type": {"status": 200, "body": '{"status": 123, "request_counts": "x"}'},
    "status is an object": {"status": 200, "body": '{"status": {"a": 1}}'},
    "huge body": {"status": 200, "body": '{"status": "cancelling", "pad": "' + "x" * (MiB + 10) + '"}'},
}


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_malformed_answer_is_502_and_service_keeps_serving(service, sim, seeded, case):
    fault = MALFORMED[case]
    sim.add_fault("openai", fault)

    err = await cancel_error(service, seeded, timeout=3)

    assert err.code() == grpc.StatusCode.UNAVAILABLE, err.details()
    detail = error_detail(err)
    assert (detail.status_code, detail.error.type) == (502, "upstream_error")
    assert detail.is_bifrost_error is True
    assert detail.error.message.startswith("openai answered")
    assert len(detail.error.message) < 200
    assert len(attempts(sim, seeded)) == 1  # a 200 is an answer: not retried
    await still_serving(service, sim)


async def test_malformed_huge_error_body_is_capped_not_buffered(service, sim, seeded):
    sim.add_fault("openai", {"status": 500, "body": "e" * (2 * MiB)})

    err = await cancel_error(service, seeded, timeout=3)

    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert error_detail(err).error.message == "openai answered with an oversized body"
    assert len(attempts(sim, seeded)) == 1
    await still_serving(service, sim)


# --- follow-up read (Gemini: the cancel answers {}, the batch is read afterwards) ------------------------


@pytest.fixture
def gemini_batch(sim):
    reset_options(sim)
    yield sim.seed("gemini", f"g{uuid.uuid4().hex[:12]}", cancel_delay_s=3600).id
    reset_options(sim)


@pytest.mark.parametrize(
    "read_fault",
    [
        {"status": 500, "count": 3},
        {"malformed": True},
        # aiohttp itself resends an idempotent GET once when a pooled connection drops, so a reset
        # read can take up to 2 x (max_retries + 1) GETs: queue plenty.
        {"reset": True, "count": 10},
        {"status": 200, "body": "[]"},
        {"status": 403},
    ],
    ids=["5xx", "malformed", "reset", "wrong-shape", "forbidden"],
)
async def test_follow_up_read_failure_reports_cancelling_with_warning(service, sim, gemini_batch, read_fault):
    sim.add_fault("gemini", [{"latency_ms": 1}, read_fault])  # the cancel itself goes through

    response = await cancel(service, gemini_batch, provider="gemini", timeout=3)

    assert response.status == "cancelling"
    assert response.extra_fields.warning.startswith("cancel accepted; reading the batch state afterwards failed")
    calls = attempts(sim, gemini_batch, "gemini")
    assert calls[0]["method"] == "POST" and calls[0]["path"].endswith(":cancel")
    assert all(c["method"] == "GET" for c in calls[1:]) and calls[1:]
    assert sim.batch("gemini", gemini_batch).status == "cancelling"


async def test_follow_up_read_transient_failure_is_retried(service, sim, gemini_batch):
    sim.add_fault("gemini", [{"latency_ms": 1}, {"status": 503}])

    response = await cancel(service, gemini_batch, provider="gemini", timeout=3)

    assert response.status == "cancelling"
    assert not response.extra_fields.HasField("warning")
    assert [c["method"] for c in attempts(sim, gemini_batch, "gemini")] == ["POST", "GET", "GET"]


async def test_follow_up_read_stall_still_answers_within_deadline(service, sim, gemini_batch):
    sim.add_fault("gemini", [{"latency_ms": 1}, {"latency_ms": 5000}])
    started = time.monotonic()

    # The cancel happened; the read cannot finish in the time left: the caller hears about the
    # cancel (with a warning) or a deadline, never a hang.
    try:
        response = await cancel(service, gemini_batch, provider="gemini", timeout=0.4)
    except grpc.aio.AioRpcError as err:
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    else:
        assert response.status == "cancelling" and response.extra_fields.warning
    assert time.monotonic() - started < 2.5  # the 0.4 s deadline, not the 5 s stall


# --- deadlines ------------------------------------------------------------------------------------------


async def test_deadline_grpc_shorter_than_provider_latency_stops_retries(service, sim, seeded):
    sim.add_fault("openai", {"latency_ms": 5000, "status": 503, "count": 10})
    started = time.monotonic()

    err = await cancel_error(service, seeded, timeout=0.25)

    elapsed = time.monotonic() - started
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 2.5  # the 0.25 s deadline, not the provider's 5 s
    await settled()  # the call has ended: it can send no other attempt
    assert len(attempts(sim, seeded)) == 1


async def test_deadline_reached_between_retries_no_attempt_after_it(sandbox, sim, seeded):
    async with running_service(config(sandbox.url, max_retries=50, backoff_ms=0, backoff_max_ms=0)) as (_, stub):
        sim.add_fault("openai", {"latency_ms": 40, "status": 503, "count": 50})
        started = time.time()
        err = await cancel_error(stub, seeded, timeout=0.3)
        deadline = started + 0.3
        await settled()
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    calls = attempts(sim, seeded)
    assert 2 <= len(calls) <= 9
    late = [c["at"] - deadline for c in calls if c["at"] > deadline + 0.02]
    assert late == [], f"upstream attempts after the deadline: {late}"


async def test_deadline_from_config_when_caller_sets_none(sandbox, sim, seeded):
    async with running_service(config(sandbox.url, timeout_s=0.3)) as (_, stub):
        sim.add_fault("openai", {"latency_ms": 5000})
        started = time.monotonic()
        err = await cancel_error(stub, seeded)  # no gRPC deadline
        elapsed = time.monotonic() - started
        await settled()
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code, detail.is_bifrost_error) == (504, "deadline_exceeded", True)
    assert 0.25 <= elapsed < 2.5  # the config's 0.3 s, not the provider's 5 s
    assert len(attempts(sim, seeded)) == 1


async def test_deadline_shorter_of_grpc_and_config(sandbox, sim, seeded):
    async with running_service(config(sandbox.url, timeout_s=0.3)) as (_, stub):
        sim.add_fault("openai", {"latency_ms": 5000})
        started = time.monotonic()
        err = await cancel_error(stub, seeded, timeout=5)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.5  # the config's 0.3 s, not the call's 5 s


async def test_deadline_envoy_expected_timeout_header_bounds_the_call(service, sim, seeded):
    sim.add_fault("openai", {"latency_ms": 5000})
    started = time.monotonic()

    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.Cancel(
            pb.CancelBatchRequest(batch_id=seeded, provider="openai"),
            metadata=(("x-envoy-expected-rq-timeout-ms", "250"),),
        )

    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - started < 2.5  # Envoy's 250 ms, not the provider's 5 s


# --- client gone ----------------------------------------------------------------------------------------


async def test_client_cancel_stops_upstream_work(sandbox, sim, seeded):
    async with running_service(config(sandbox.url, max_retries=10, backoff_ms=1)) as (app, stub):
        sim.add_fault("openai", {"latency_ms": 5000, "status": 503, "count": 10})
        call = stub.Cancel(pb.CancelBatchRequest(batch_id=seeded, provider="openai"))
        await eventually(lambda: len(attempts(sim, seeded)) == 1)  # the first attempt is in flight (5 s)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        await settled()  # the service stopped the call: no retry can follow (a bug would keep it retrying)
        assert len(attempts(sim, seeded)) == 1, "upstream retries went on after the caller left"
        await still_serving(stub, sim)


async def test_client_cancel_mid_backoff_stops_upstream_work(sandbox, sim, seeded):
    async with running_service(config(sandbox.url, max_retries=5)) as (_, stub):
        sim.add_fault("openai", {"status": 429, "retry_after": 5, "count": 10})
        answered = upstream_answers("4xx")
        call = stub.Cancel(pb.CancelBatchRequest(batch_id=seeded, provider="openai"))
        await eventually(lambda: upstream_answers("4xx") == answered + 1)  # the 429 is in: now in its wait
        call.cancel()
        await settled()  # the service stopped the call during the wait: no retry can follow
        assert len(attempts(sim, seeded)) == 1, "a retry went out after the caller left"


async def test_client_cancel_releases_admission_slot(sandbox, sim, seeded):
    limits = {"concurrency": 1, "buffer_size": 0}
    async with running_service(config(sandbox.url, limits=limits)) as (app, stub):
        sim.add_fault("openai", {"latency_ms": 2000})
        call = stub.Cancel(pb.CancelBatchRequest(batch_id=seeded, provider="openai"))
        await eventually(lambda: len(attempts(sim, seeded)) == 1)
        call.cancel()
        await settled()
        await still_serving(stub, sim)  # the only slot came back


# --- overload -------------------------------------------------------------------------------------------


async def test_overload_full_buffer_refused_fast_with_retry_after(sandbox, sim):
    limits = {"concurrency": 1, "buffer_size": 1}
    async with running_service(config(sandbox.url, limits=limits)) as (app, stub):
        admission = app.canceller.providers["openai"].admission
        ids = [sim.seed("openai", new_id(), cancel_delay_s=3600).id for _ in range(3)]
        sim.add_fault("openai", {"latency_ms": 1000, "count": 2})
        running = asyncio.ensure_future(cancel(stub, ids[0], timeout=3))
        await eventually(lambda: len(sim.calls("openai")) == 1)
        queued = asyncio.ensure_future(cancel(stub, ids[1], timeout=3))
        await eventually(lambda: admission.waiting == 1)

        call = stub.Cancel(pb.CancelBatchRequest(batch_id=ids[2], provider="openai"), timeout=3)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call

        # Refused at once: the running call is still held at the provider and the queued one still
        # waits (a queued third call would have been answered after both).
        assert not running.done() and not queued.done() and admission.waiting == 1
        err = info.value
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        detail = error_detail(err)
        assert (detail.status_code, detail.error.code, detail.is_bifrost_error) == (429, "overloaded", True)
        assert ("retry-after", "1") in tuple(await call.initial_metadata())

        # A burst while saturated: all refused, nothing queued beyond buffer_size, no upstream call.
        burst = await asyncio.gather(*(cancel(stub, new_id(), timeout=3) for _ in range(50)), return_exceptions=True)
        assert all(
            isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED for r in burst
        )
        assert admission.waiting == 1
        assert len(sim.calls("openai")) == 1

        first, second = await asyncio.gather(running, queued)
        assert (first.status, second.status) == ("cancelling", "cancelling")
        assert admission.waiting == 0
        assert [c["path"] for c in sim.calls("openai")] == [f"/openai/v1/batches/{i}/cancel" for i in ids[:2]]
        assert sim.batch("openai", ids[2]).status == "in_progress"
        await still_serving(stub, sim)


async def test_overload_queued_call_runs_when_slot_frees(sandbox, sim):
    limits = {"concurrency": 2, "buffer_size": 4}
    async with running_service(config(sandbox.url, limits=limits)) as (app, stub):
        ids = [sim.seed("openai", new_id(), cancel_delay_s=3600).id for _ in range(6)]
        sim.add_fault("openai", {"latency_ms": 150, "count": 6})
        results = await asyncio.gather(*(cancel(stub, i, timeout=3) for i in ids))
    assert [r.status for r in results] == ["cancelling"] * 6
    starts = sorted(c["at"] for c in sim.calls("openai"))
    # Never more than 2 upstream calls at once: the third starts only after the first ends.
    assert starts[2] - starts[0] >= 0.13


# --- circuit breaker ------------------------------------------------------------------------------------

OPEN_SECONDS = 30
BREAKER = {"failure_threshold": 2, "open_seconds": OPEN_SECONDS}


class SteppedClock:
    """The breakers' clock: moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def cool_down(self) -> None:
        self.now += OPEN_SECONDS


@pytest.fixture
def breaker_clock():
    return SteppedClock()


@pytest.fixture
async def breaker_service(sandbox, sim, breaker_clock):
    cfg = parse_config(config(sandbox.url, max_retries=0, breaker=BREAKER), env={})
    factory = RuntimeFactory.for_config(cfg, Collaborators(clock=breaker_clock))
    async with running_service(LiveConfig(cfg, factory=factory)) as (app, stub):
        yield app, stub


async def open_circuit(stub, sim) -> None:
    sim.add_fault("openai", {"status": 500, "count": 2})
    for _ in range(2):
        err = await cancel_error(stub, sim.seed("openai", new_id()).id, timeout=3)
        assert err.code() == grpc.StatusCode.INTERNAL  # the provider's own 500, passed on


async def test_circuit_opens_after_threshold_and_fails_fast_without_upstream_call(breaker_service, sim):
    app, stub = breaker_service
    await open_circuit(stub, sim)
    before = len(sim.calls("openai"))
    batch_id = sim.seed("openai", new_id()).id

    err = await cancel_error(stub, batch_id, timeout=3)

    assert err.code() == grpc.StatusCode.UNAVAILABLE  # failing fast is no upstream call (below)
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code, detail.is_bifrost_error) == (503, "circuit_open", True)
    assert ("retry-after", str(OPEN_SECONDS)) in tuple(err.initial_metadata())  # the clock stood still
    assert len(sim.calls("openai")) == before
    assert app.canceller.breaker_states()["openai"] == "open"
    assert app.canceller.breaker_states()["gemini"] == "closed"  # per provider


async def test_circuit_probe_success_closes_it(breaker_service, sim, breaker_clock):
    app, stub = breaker_service
    await open_circuit(stub, sim)
    breaker_clock.cool_down()
    assert app.canceller.breaker_states()["openai"] == "half_open"
    before = len(sim.calls("openai"))

    probe = await cancel(stub, sim.seed("openai", new_id(), cancel_delay_s=3600).id, timeout=3)

    assert probe.status == "cancelling"
    assert len(sim.calls("openai")) == before + 1
    assert app.canceller.breaker_states()["openai"] == "closed"
    for _ in range(3):
        await still_serving(stub, sim)


async def test_circuit_probe_failure_reopens_it(breaker_service, sim, breaker_clock):
    app, stub = breaker_service
    await open_circuit(stub, sim)
    breaker_clock.cool_down()
    sim.add_fault("openai", {"status": 503})

    probe = await cancel_error(stub, sim.seed("openai", new_id()).id, timeout=3)

    assert error_detail(probe).status_code == 503 and error_detail(probe).error.code != "circuit_open"
    before = len(sim.calls("openai"))
    again = await cancel_error(stub, sim.seed("openai", new_id()).id, timeout=3)
    assert error_detail(again).error.code == "circuit_open"
    assert len(sim.calls("openai")) == before
    breaker_clock.cool_down()
    await still_serving(stub, sim)  # the next probe succeeds


async def test_circuit_half_open_lets_exactly_one_probe_through(breaker_service, sim, breaker_clock):
    app, stub = breaker_service
    await open_circuit(stub, sim)
    breaker_clock.cool_down()
    sim.add_fault("openai", {"latency_ms": 200})
    before = len(sim.calls("openai"))

    results = await asyncio.gather(
        *(cancel(stub, sim.seed("openai", new_id(), cancel_delay_s=3600).id, timeout=3) for _ in range(5)),
        return_exceptions=True,
    )

    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(ok) == 1 and len(refused) == 4
    assert all(error_detail(r).error.code == "circuit_open" for r in refused)
    assert len(sim.calls("openai")) == before + 1


async def test_circuit_not_opened_by_connection_failures_below_threshold(breaker_service, sim):
    app, stub = breaker_service
    sim.add_fault("openai", {"reset": True})
    err = await cancel_error(stub, sim.seed("openai", new_id()).id, timeout=3)
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    assert app.canceller.breaker_states()["openai"] == "closed"
    await still_serving(stub, sim)  # a success resets the failure count
    sim.add_fault("openai", {"reset": True})
    await cancel_error(stub, sim.seed("openai", new_id()).id, timeout=3)
    assert app.canceller.breaker_states()["openai"] == "closed"


async def test_circuit_client_errors_do_not_count_as_failures(breaker_service, sim):
    app, stub = breaker_service
    sim.add_fault("openai", {"status": 409, "count": 3})
    for _ in range(3):
        await cancel_error(stub, sim.seed("openai", new_id()).id, timeout=3)
    assert app.canceller.breaker_states()["openai"] == "closed"


async def test_circuit_timeouts_do_not_open_it(sandbox, sim):
    cfg = config(sandbox.url, max_retries=0, breaker=BREAKER)
    async with running_service(cfg) as (app, stub):
        sim.add_fault("openai", {"latency_ms": 400, "count": 3})
        for _ in range(3):
            err = await cancel_error(stub, sim.seed("openai", new_id()).id, timeout=0.1)
            assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert app.canceller.breaker_states()["openai"] == "closed"
