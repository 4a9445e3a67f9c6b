"""BatchService.Cancel over real gRPC (grpc.aio on loopback) against the sandbox over real HTTP.
Nothing of batchgate is mocked; the simulator records every upstream call."""

from __future__ import annotations

import time
import uuid

import grpc
import pytest

from service.gen.batchgate.v1 import batchgate_pb2 as pb

# cancel, cancel_error and error_detail are also imported from this module by other test modules.
from tests.support import (
    AZURE_KEY,
    OPENAI_KEYS,
    cancel,
    cancel_error,
    config_dict,
    error_detail,
    running_service,
)


def new_id() -> str:
    return f"batch_{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def service(sandbox, sim):
    async with running_service(config_dict(sandbox.url)) as (app, stub):
        yield stub


async def test_cancel_in_progress_batch_reports_cancelling_with_counts_and_time(service, sim):
    batch = sim.seed("openai", new_id(), request_counts={"total": 50, "completed": 20, "failed": 3})
    response = await cancel(service, batch.id)
    assert response.id == batch.id
    assert response.object == "batch"
    assert response.status == "cancelling"
    assert (response.request_counts.total, response.request_counts.completed, response.request_counts.failed) == (
        50,
        20,
        3,
    )
    assert not response.request_counts.HasField("succeeded")
    assert response.cancelling_at == sim.batch("openai", batch.id).cancelling_at
    assert not response.HasField("cancelled_at")
    assert response.extra_fields.request_type == "batch_cancel"
    assert response.extra_fields.provider == "openai"
    assert not response.extra_fields.HasField("raw_response")


async def test_cancel_sends_the_configured_key_and_not_the_callers_credentials(service, sim):
    batch = sim.seed("openai", new_id())
    await cancel(service, batch.id, metadata=(("authorization", "Bearer caller-secret"), ("cookie", "c=1")))
    (call,) = sim.calls("openai")
    assert call["method"] == "POST"
    assert call["path"] == f"/openai/v1/batches/{batch.id}/cancel"
    assert call["headers"]["Authorization"] == f"Bearer {OPENAI_KEYS[0]}"
    assert "caller-secret" not in str(call["headers"]) and "Cookie" not in call["headers"]


async def test_second_cancel_of_a_cancelling_batch_answers_its_state(service, sim):
    started = int(time.time()) - 5
    batch = sim.seed("openai", new_id(), status="cancelling", cancelling_at=started, cancel_delay_s=3600)
    response = await cancel(service, batch.id)
    assert (response.status, response.cancelling_at) == ("cancelling", started)


async def test_azure_uses_api_key_header_and_api_version(service, sim):
    batch = sim.seed("azure", new_id())
    response = await cancel(service, batch.id, provider="azure")
    assert (response.status, response.extra_fields.provider) == ("cancelling", "azure")
    (call,) = sim.calls("azure")
    assert call["path"] == f"/azure/openai/batches/{batch.id}/cancel"
    assert call["query"] == {"api-version": "2024-10-21"} or "api-version=2024-10-21" in str(call["query"])
    assert call["headers"]["api-key"] == AZURE_KEY
    assert "Authorization" not in call["headers"]


async def test_azure_preview_quirks_are_normalized(service, sim):
    sim.azure_quirks = True
    batch = sim.seed("azure", new_id())
    response = await cancel(service, batch.id, provider="azure")
    assert response.status == "cancelling"
    assert response.cancelling_at == sim.batch("azure", batch.id).cancelling_at
    assert not response.HasField("request_counts")  # null counts stay unknown, never zeros


async def test_finished_batch_is_failed_precondition_with_provider_message(service, sim):
    batch = sim.seed("openai", new_id(), status="completed")
    err = await cancel_error(service, batch.id)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    detail = error_detail(err)
    assert detail.status_code == 409
    assert detail.is_bifrost_error is False
    assert detail.error.message == "Cannot cancel a batch with status 'completed'."
    assert detail.error.type == "invalid_request_error"
    assert detail.extra_fields.provider == "openai"


async def test_unknown_batch_is_not_found(service, sim):
    err = await cancel_error(service, new_id())
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert error_detail(err).status_code == 404


@pytest.mark.parametrize(
    ("provider", "code", "message"),
    [
        ("", "invalid_request", "provider query parameter is required"),
        ("nosuchprovider", "unknown_provider", "unknown provider: nosuchprovider"),
        ("ollama", "unsupported_operation", "batch cancel is not supported by provider: ollama"),
    ],
)
async def test_bad_provider_is_invalid_argument_before_any_upstream_call(service, sim, provider, code, message):
    err = await cancel_error(service, new_id(), provider=provider)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    detail = error_detail(err)
    assert (detail.status_code, detail.error.code, detail.error.message) == (400, code, message)
    assert sim.calls() == []


async def test_known_but_unconfigured_provider_is_refused(sandbox, sim):
    config = config_dict(sandbox.url)
    del config["providers"]["azure"]
    async with running_service(config) as (_, stub):
        err = await cancel_error(stub, new_id(), provider="azure")
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_detail(err).error.code == "provider_not_configured"


@pytest.mark.parametrize("batch_id", ["a/b", "..", "a?b", "a#b", "a\\b", "a%2Fb", "a\x00b", "a b", ""])
async def test_unsafe_ids_never_reach_the_provider(service, sim, batch_id):
    err = await cancel_error(service, batch_id)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_detail(err).error.param == "batch_id"
    assert sim.calls() == []


async def test_id_is_escaped_as_one_segment(service, sim):
    batch = sim.seed("openai", "batch:with:colons")
    await cancel(service, batch.id)
    assert sim.calls("openai")[0]["path"] == "/openai/v1/batches/batch%3Awith%3Acolons/cancel"


async def test_no_batch_enabled_key_is_refused(sandbox, sim):
    config = config_dict(sandbox.url)
    config["providers"]["openai"]["keys"][0]["use_for_batch_api"] = False
    async with running_service(config) as (_, stub):
        err = await cancel_error(stub, new_id())
    assert error_detail(err).error.message == "no batch-enabled keys found for provider: openai"
    assert sim.calls() == []


async def test_keys_are_tried_in_order_until_one_succeeds(sandbox, sim):
    config = config_dict(sandbox.url)
    config["providers"]["openai"]["keys"] = [
        {"name": "revoked", "value": "sk-revoked-000000000000", "use_for_batch_api": True},
        {"name": "disabled", "value": OPENAI_KEYS[0], "use_for_batch_api": True, "enabled": False},
        {"name": "good", "value": OPENAI_KEYS[1], "use_for_batch_api": True},
    ]
    batch = sim.seed("openai", new_id())
    async with running_service(config) as (_, stub):
        response = await cancel(stub, batch.id)
    assert response.status == "cancelling"
    assert [c["headers"]["Authorization"] for c in sim.calls("openai")] == [
        "Bearer sk-revoked-000000000000",
        f"Bearer {OPENAI_KEYS[1]}",
    ]


async def test_last_keys_error_is_reported_when_all_fail(sandbox, sim):
    config = config_dict(sandbox.url)
    config["providers"]["openai"]["keys"] = [
        {"name": "a", "value": "sk-wrong-aaaaaaaaaaaa", "use_for_batch_api": True},
        {"name": "b", "value": "sk-wrong-bbbbbbbbbbbb", "use_for_batch_api": True},
    ]
    async with running_service(config) as (_, stub):
        err = await cancel_error(stub, new_id())
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    detail = error_detail(err)
    assert detail.status_code == 401
    assert "sk-wrong-bbbbbbbbbbbb" not in detail.error.message  # the provider masks it; so do we
    assert len(sim.calls("openai")) == 2


async def test_conflict_on_first_key_is_final(sandbox, sim):
    config = config_dict(sandbox.url)
    config["providers"]["openai"]["keys"].append({"name": "b", "value": OPENAI_KEYS[1], "use_for_batch_api": True})
    batch = sim.seed("openai", new_id(), status="expired")
    async with running_service(config) as (_, stub):
        err = await cancel_error(stub, batch.id)
    assert error_detail(err).status_code == 409
    assert len(sim.calls("openai")) == 1


def with_retries(sandbox, retries: int) -> dict:
    config = config_dict(sandbox.url)
    config["providers"]["openai"]["network_config"].update(
        max_retries=retries, retry_backoff_initial_ms=1, retry_backoff_max_ms=5
    )
    return config


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 503}, {"status": 429}, {"reset": True}])
async def test_transient_failures_are_retried(sandbox, sim, fault):
    batch = sim.seed("openai", new_id())
    sim.add_fault("openai", {**fault, "count": 2})
    async with running_service(with_retries(sandbox, 2)) as (_, stub):
        response = await cancel(stub, batch.id)
    assert response.status == "cancelling"
    assert len(sim.calls("openai")) == 3


async def test_rate_limit_after_retries_keeps_429(sandbox, sim):
    sim.add_fault("openai", {"status": 429, "retry_after": 0.01, "count": 3})
    async with running_service(with_retries(sandbox, 1)) as (_, stub):
        err = await cancel_error(stub, new_id())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_detail(err).status_code == 429
    assert len(sim.calls("openai")) == 2


async def test_retry_after_beyond_the_deadline_is_not_waited_for(sandbox, sim):
    sim.add_fault("openai", {"status": 429, "retry_after": 30})
    async with running_service(with_retries(sandbox, 3)) as (_, stub):
        err = await cancel_error(stub, new_id())
    assert error_detail(err).status_code == 429
    assert len(sim.calls("openai")) == 1


@pytest.mark.parametrize(
    ("fault", "message"),
    [({"malformed": True}, "malformed JSON"), ({"status": 200, "body": "<html>hi</html>"}, "HTML")],
)
async def test_malformed_upstream_answers_are_502(service, sim, fault, message):
    sim.add_fault("openai", fault)
    err = await cancel_error(service, new_id())
    assert err.code() == grpc.StatusCode.UNAVAILABLE
    detail = error_detail(err)
    assert detail.status_code == 502 and message in detail.error.message


async def test_html_error_page_keeps_its_status(service, sim):
    sim.add_fault("openai", {"html": True})
    err = await cancel_error(service, new_id())
    assert error_detail(err).status_code == 502


async def test_client_deadline_bounds_the_upstream_call(service, sim):
    sim.add_fault("openai", {"latency_ms": 2000})
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await service.Cancel(pb.CancelBatchRequest(batch_id=new_id(), provider="openai"), timeout=0.3)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_provider_timeout_gives_deadline_exceeded(sandbox, sim):
    config = config_dict(sandbox.url)
    config["providers"]["openai"]["network_config"]["default_request_timeout_in_seconds"] = 0.2
    sim.add_fault("openai", {"latency_ms": 1000})
    async with running_service(config) as (_, stub):
        err = await cancel_error(stub, new_id())
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert error_detail(err).status_code == 504


async def test_raw_response_when_provider_config_asks(sandbox, sim):
    config = config_dict(sandbox.url)
    config["providers"]["openai"]["send_back_raw_response"] = True
    batch = sim.seed("openai", new_id())
    async with running_service(config) as (_, stub):
        response = await cancel(stub, batch.id)
    raw = response.extra_fields.raw_response.struct_value
    assert raw["id"] == batch.id and raw["status"] == "cancelling" and raw["object"] == "batch"
    assert OPENAI_KEYS[0] not in str(response)


@pytest.mark.parametrize(("allow", "expected"), [(True, True), (False, False)])
async def test_raw_response_per_request_needs_the_client_override(sandbox, sim, allow, expected):
    batch = sim.seed("openai", new_id())
    async with running_service(config_dict(sandbox.url, allow_per_request_raw_override=allow)) as (_, stub):
        response = await cancel(stub, batch.id, metadata=(("x-bf-send-back-raw-response", "true"),))
    assert response.extra_fields.HasField("raw_response") is expected


async def test_openai_surface_defaults_to_openai(service, sim):
    batch = sim.seed("openai", new_id())
    response = await cancel(service, batch.id, provider="", surface="openai")
    assert response.extra_fields.provider == "openai"


async def test_health_and_reflection_are_served(sandbox, sim):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    async with running_service(config_dict(sandbox.url)) as (app, _):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="batchgate.v1.BatchService")
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING
            stream = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            names = [s.name async for r in stream for s in r.list_services_response.service]
    assert "batchgate.v1.BatchService" in names


# --- the edge's plumbing stays at the edge (issue 23) --------------------------------------------

EDGE_PLUMBING = ("x-bf-error-body", "x-bf-status", "x-bf-stream")


async def test_native_grpc_callers_never_get_the_edges_plumbing(service, sim):
    """x-bf-error-body / x-bf-status (a failed call) and x-bf-stream (CancelMany) are metadata for the
    edge's Lua filter: a direct gRPC caller sees the status and its typed detail only."""
    failed = service.Cancel(pb.CancelBatchRequest(batch_id=new_id(), provider="nosuch"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await failed
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_detail(info.value).error.code == "unknown_provider"
    assert [key for key, _ in await failed.initial_metadata() if key in EDGE_PLUMBING] == []

    batch = sim.seed("openai", new_id())
    stream = service.CancelMany(
        pb.CancelManyRequest(batches=[pb.BatchRef(id=batch.id, provider="openai"), pb.BatchRef(id="x", provider="no")])
    )
    events = [event async for event in stream]
    assert sorted(event.WhichOneof("result") for event in events) == ["batch", "error"]
    assert [key for key, _ in await stream.initial_metadata() if key in EDGE_PLUMBING] == []
    # A REST call through the edge (Envoy names its original path) still gets the rendering.
    rest = service.Cancel(
        pb.CancelBatchRequest(batch_id="batch_x", provider="nosuch"),
        metadata=(("x-envoy-original-path", "/v1/batches/batch_x/cancel?provider=nosuch"),),
    )
    with pytest.raises(grpc.aio.AioRpcError):
        await rest
    assert {key for key, _ in await rest.initial_metadata()} >= {"x-bf-error-body", "x-bf-status"}
