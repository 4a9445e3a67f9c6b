"""What operators see, over real gRPC: metrics after a scripted mix of cancels, one access line and
one audit event per request with the documented fields, request ids, traces, and no secret in any
log line at any level."""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import REGISTRY

from service.config.settings import Settings
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.infra.observability import JsonFormatter, configure_tracing
from tests.integration.test_auth import VK_TEAM, governed
from tests.support import AZURE_KEY, OPENAI_KEYS, running_service

ACCESS_FIELDS = {
    "request_id",
    "route",
    "provider",
    "batch_id",
    "caller",
    "outcome",
    "status",
    "upstream_status",
    "attempts",
    "key_failovers",
    "latency_ms",
}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def cancel_attempts(result: str) -> float:
    return sample("batchgate_upstream_attempts_total", provider="openai", operation="cancel", result=result)


def new_id() -> str:
    return f"batch_{uuid.uuid4().hex[:16]}"


@pytest.fixture
async def service(sandbox, sim):
    async with running_service(governed(sandbox.url)) as (_, stub):
        yield stub


async def call(stub, batch_id: str, metadata=(), expect=grpc.StatusCode.OK) -> grpc.aio.UnaryUnaryCall:
    """One cancel that must end with `expect`: a scenario that did not happen as written fails here,
    not later as a log line that is missing for another reason."""
    invocation = stub.Cancel(pb.CancelBatchRequest(batch_id=batch_id, provider="openai"), metadata=metadata)
    try:
        await invocation
    except grpc.aio.AioRpcError as err:
        assert err.code() == expect, f"{err.code().name} ({err.details()}), expected {expect.name}"
    else:
        assert expect == grpc.StatusCode.OK, f"the call succeeded, expected {expect.name}"
    return invocation


async def test_counters_follow_a_scripted_mix_of_outcomes(service, sim):
    before = {
        "ok": sample("batchgate_requests_total", route="grpc", provider="openai", code="OK"),
        "not_found": sample("batchgate_requests_total", route="grpc", provider="openai", code="NOT_FOUND"),
        "blocked": sample("batchgate_requests_total", route="grpc", provider="openai", code="UNAUTHENTICATED"),
        "attempts_2xx": cancel_attempts("2xx"),
        "attempts_4xx": cancel_attempts("4xx"),
        "failovers": sample("batchgate_key_failovers_total", provider="openai"),
    }
    await call(service, sim.seed("openai", new_id()).id, (("x-bf-vk", VK_TEAM),))  # success
    await call(service, new_id(), (("x-bf-vk", VK_TEAM),), grpc.StatusCode.NOT_FOUND)  # 404 on both keys: a failover
    await call(service, new_id(), (("x-bf-vk", "sk-bf-wrong-000000000"),), grpc.StatusCode.UNAUTHENTICATED)
    assert sample("batchgate_requests_total", route="grpc", provider="openai", code="OK") == before["ok"] + 1
    assert (
        sample("batchgate_requests_total", route="grpc", provider="openai", code="NOT_FOUND") == before["not_found"] + 1
    )
    assert sample("batchgate_requests_total", route="grpc", provider="openai", code="UNAUTHENTICATED") == (
        before["blocked"] + 1
    )
    assert cancel_attempts("2xx") == before["attempts_2xx"] + 1
    assert cancel_attempts("4xx") == before["attempts_4xx"] + 2
    assert sample("batchgate_key_failovers_total", provider="openai") == before["failovers"] + 1
    assert sample("batchgate_in_flight_requests") == 0


async def test_unknown_provider_names_never_become_labels(service, sim):
    stub = service
    with pytest.raises(grpc.aio.AioRpcError):
        await stub.Cancel(pb.CancelBatchRequest(batch_id="b", provider=f"zz{uuid.uuid4().hex}"))
    labels = {s.labels.get("provider") for m in REGISTRY.collect() if m.name == "batchgate_requests" for s in m.samples}
    assert all(label in {"unknown"} or not label.startswith("zz") for label in labels)


async def test_one_access_line_and_one_audit_event_per_request(service, sim, caplog):
    caplog.set_level(logging.INFO)
    batch = sim.seed("openai", new_id())
    await call(service, batch.id, (("x-bf-vk", VK_TEAM), ("x-request-id", "req-abc-1")))
    await call(service, new_id(), (("x-bf-vk", "sk-bf-wrong-000000000"),), grpc.StatusCode.UNAUTHENTICATED)
    access = [r for r in caplog.records if r.name == "batchgate.access"]
    audit = [r for r in caplog.records if r.name == "batchgate.audit"]
    assert len(access) == 2 and len(audit) == 2
    ok, refused = (r.fields for r in access)
    assert ACCESS_FIELDS <= ok.keys()
    assert (ok["request_id"], ok["route"], ok["provider"], ok["batch_id"]) == ("req-abc-1", "grpc", "openai", batch.id)
    assert (ok["caller"], ok["outcome"], ok["status"], ok["upstream_status"], ok["attempts"]) == (
        "vk:team-a",
        "OK",
        200,
        200,
        1,
    )
    assert (refused["caller"], refused["outcome"], refused["status"], refused["attempts"]) == (
        "anonymous",
        "UNAUTHENTICATED",
        401,
        0,
    )
    assert audit[0].fields == {
        "event": "audit",
        "request_id": "req-abc-1",
        "who": "vk:team-a",
        "action": "batch.cancel",
        "provider": "openai",
        "batch_id": batch.id,
        "result": "ok",
        "status": 200,
    }
    assert audit[1].fields["result"] == "UNAUTHENTICATED"
    line = json.loads(JsonFormatter().format(access[0]))
    assert line["request_id"] == "req-abc-1" and line["logger"] == "batchgate.access"


async def test_request_id_is_generated_returned_and_sent_upstream(service, sim):
    batch = sim.seed("openai", new_id())
    invocation = await call(service, batch.id, (("x-bf-vk", VK_TEAM),))
    rid = dict(await invocation.initial_metadata())["x-request-id"]
    assert len(rid) == 32
    assert sim.calls("openai")[0]["headers"]["X-Client-Request-Id"] == rid


# The rule (README, Operating): at most 128 characters of A-Z a-z 0-9 . _ : -, else a generated id.
ALLOWED = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
KEPT_IDS = {
    "one character": "r",
    "128 characters": "x" * 128,
    "128 of every allowed character": (ALLOWED * 2)[:128],
}
REPLACED_IDS = {
    "129 characters": "x" * 129,
    "129 of every allowed character": (ALLOWED * 2)[:129],
    "empty": "",
    "a space": "a b",
    "a slash": "a/b",
    "a semicolon": "a;b",
    "a comma": "ok,other",
    "a plus": "a+b",
    "a quote": 'a"b',
}


@pytest.mark.parametrize("given", list(KEPT_IDS.values()), ids=list(KEPT_IDS))
async def test_a_request_id_within_the_rule_is_kept_as_sent(service, sim, caplog, given):
    caplog.set_level(logging.INFO)
    batch = sim.seed("openai", new_id())
    invocation = await call(service, batch.id, (("x-bf-vk", VK_TEAM), ("x-request-id", given)))
    (upstream,) = sim.calls("openai")
    assert upstream["headers"]["X-Client-Request-Id"] == given
    (access,) = [r.fields for r in caplog.records if r.name == "batchgate.access"]
    assert access["request_id"] == given
    assert "x-request-id" not in dict(await invocation.initial_metadata())  # the caller knows its own


@pytest.mark.parametrize("given", list(REPLACED_IDS.values()), ids=list(REPLACED_IDS))
async def test_a_request_id_outside_the_rule_is_replaced_by_a_generated_one(service, sim, caplog, given):
    caplog.set_level(logging.INFO)
    batch = sim.seed("openai", new_id())
    invocation = await call(service, batch.id, (("x-bf-vk", VK_TEAM), ("x-request-id", given)))
    generated = dict(await invocation.initial_metadata())["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated) and generated != given
    (upstream,) = sim.calls("openai")
    assert upstream["headers"]["X-Client-Request-Id"] == generated
    (access,) = [r.fields for r in caplog.records if r.name == "batchgate.access"]
    assert access["request_id"] == generated


async def test_no_secret_in_any_log_line_at_any_level(sandbox, sim, caplog):
    """Arranges its own calls (a success, a wrong gateway password, a direct key the provider
    refuses, provider failures on both keys), checks each happened as written, then searches every
    record this test produced."""
    caplog.set_level(logging.DEBUG)
    config = governed(sandbox.url, allow_direct_keys=True)
    config["auth_config"] = {"is_enabled": True, "admin_username": "admin", "admin_password": "pw-SECRET-0001"}
    secrets = [*OPENAI_KEYS, AZURE_KEY, VK_TEAM, "pw-SECRET-0001", "sk-direct-SECRET-0002"]
    wrong_basic = "Basic " + base64.b64encode(b"admin:wrong").decode()
    admin_basic = "Basic " + base64.b64encode(b"admin:pw-SECRET-0001").decode()
    async with running_service(config) as (_, stub):
        await call(stub, sim.seed("openai", new_id()).id, (("x-bf-vk", VK_TEAM),))
        await call(stub, new_id(), (("authorization", wrong_basic),), grpc.StatusCode.UNAUTHENTICATED)
        direct = (("x-api-key", "sk-direct-SECRET-0002"), ("authorization", admin_basic))
        await call(stub, sim.seed("openai", new_id()).id, direct, grpc.StatusCode.UNAUTHENTICATED)
        sim.add_fault("openai", {"status": 500, "count": 2})
        await call(stub, new_id(), (("x-bf-vk", VK_TEAM),), grpc.StatusCode.INTERNAL)
    # Each scenario reached the provider with the credential it was about (the wrong password none).
    assert [c["headers"]["Authorization"] for c in sim.calls("openai")] == [
        f"Bearer {OPENAI_KEYS[0]}",
        "Bearer sk-direct-SECRET-0002",
        f"Bearer {OPENAI_KEYS[0]}",
        f"Bearer {OPENAI_KEYS[1]}",
    ]
    records = [r for r in caplog.records if r.name == "batchgate.access"]
    assert [(r.fields["caller"], r.fields["outcome"]) for r in records] == [
        ("vk:team-a", "OK"),
        ("anonymous", "UNAUTHENTICATED"),
        ("admin", "UNAUTHENTICATED"),
        ("vk:team-a", "INTERNAL"),
    ]
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # DEBUG lines were there to search
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    text += "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    assert [secret for secret in secrets if secret in text] == []
    assert admin_basic.split()[1] not in text


async def test_spans_for_the_rpc_and_each_attempt_continue_the_callers_trace(service, sim):
    exporter = InMemorySpanExporter()
    configure_tracing(Settings(), exporter)
    trace_id = uuid.uuid4().hex
    parent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    sim.add_fault("openai", {"status": 503})
    batch = sim.seed("openai", new_id())
    await call(service, batch.id, (("x-bf-vk", VK_TEAM), ("traceparent", parent)))
    spans = exporter.get_finished_spans()
    server = [s for s in spans if s.name == "batchgate.v1.BatchService/Cancel"]
    client = [s for s in spans if s.name == "POST openai"]
    assert len(server) == 1 and len(client) == 2  # the 503 and its retry
    assert format(server[0].context.trace_id, "032x") == trace_id
    assert all(s.parent.span_id == server[0].context.span_id for s in client)
    assert [s.attributes["http.response.status_code"] for s in client] == [503, 200]
    assert sim.calls("openai")[-1]["headers"]["traceparent"].split("-")[1] == trace_id
