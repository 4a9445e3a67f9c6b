"""What an operator sees of a running gateway (issue 8), through real processes: /metrics scraped
over HTTP after a scripted mix of REST cancels, the access and audit lines in the service's log
output, /health through Envoy, and Envoy's own stats on its loopback admin port."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
import requests

from gateway.stack import Stack, free_port
from tests.e2e.conftest import SimAdmin, new_id


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """A sandbox-mode gateway with one worker whose metrics port is known and whose logs are kept."""
    logs = tmp_path_factory.mktemp("operating-logs")
    stack = Stack(
        config=None,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        metrics_port=free_port(),
        log_dir=logs,
    )
    stack.start(timeout=30)
    yield stack
    stack.stop()


def scrape(stack: Stack) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=5).text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def log_lines(stack: Stack, logger: str) -> list[dict]:
    lines = []
    for raw in (stack.log_dir / "service.log").read_text().splitlines():
        if raw.startswith("{"):
            record = json.loads(raw)
            if record.get("logger") == logger:
                lines.append(record)
    return lines


def test_metrics_logs_and_audit_follow_a_scripted_mix(observed: Stack) -> None:
    sim = SimAdmin(observed.sandbox_url)
    ok_id, missing_id = sim.seed("openai"), new_id("missing")
    base = observed.http_url
    before = scrape(observed)
    answers = [
        requests.post(f"{base}/v1/batches/{ok_id}/cancel?provider=openai", headers={"x-request-id": "op-ok-1"}),
        requests.post(f"{base}/v1/batches/{missing_id}/cancel?provider=openai", headers={"x-request-id": "op-404-1"}),
        requests.post(f"{base}/v1/batches/{new_id()}/cancel", headers={"x-request-id": "op-400-1"}),
    ]
    assert [a.status_code for a in answers] == [200, 404, 400]
    assert [a.headers["x-request-id"] for a in answers] == ["op-ok-1", "op-404-1", "op-400-1"]
    after = scrape(observed)

    def delta(sample: str) -> float:
        return after.get(sample, 0.0) - before.get(sample, 0.0)

    assert delta('batchgate_requests_total{code="OK",provider="openai",route="native"}') == 1
    assert delta('batchgate_requests_total{code="NOT_FOUND",provider="openai",route="native"}') == 1
    assert delta('batchgate_requests_total{code="INVALID_ARGUMENT",provider="unknown",route="native"}') == 1
    assert delta('batchgate_upstream_attempts_total{operation="cancel",provider="openai",result="2xx"}') == 1
    assert delta('batchgate_upstream_attempts_total{operation="cancel",provider="openai",result="4xx"}') == 1
    assert after["batchgate_in_flight_requests"] == 0
    assert after['batchgate_circuit_state{provider="openai"}'] == 0
    assert not any(ok_id in name or missing_id in name for name in after)  # no batch id in any label

    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the log file is written by another process
        access = {r["request_id"]: r for r in log_lines(observed, "batchgate.access")}
        if {"op-ok-1", "op-404-1", "op-400-1"} <= access.keys():
            break
        time.sleep(0.05)
    ok, missing, bad = access["op-ok-1"], access["op-404-1"], access["op-400-1"]
    assert (ok["route"], ok["provider"], ok["batch_id"], ok["caller"], ok["outcome"], ok["status"]) == (
        "native",
        "openai",
        ok_id,
        "anonymous",
        "OK",
        200,
    )
    assert (ok["upstream_status"], ok["attempts"]) == (200, 1) and ok["latency_ms"] > 0
    assert (missing["outcome"], missing["status"], missing["upstream_status"]) == ("NOT_FOUND", 404, 404)
    assert (bad["outcome"], bad["status"], bad["attempts"]) == ("INVALID_ARGUMENT", 400, 0)
    audit = {r["request_id"]: r for r in log_lines(observed, "batchgate.audit")}
    assert audit["op-ok-1"]["event"] == "audit" and audit["op-ok-1"]["result"] == "ok"
    assert audit["op-404-1"]["result"] == "NOT_FOUND" and audit["op-400-1"]["who"] == "anonymous"
    assert "sk-sandbox-openai" not in (observed.log_dir / "service.log").read_text()


def test_health_through_envoy_reports_each_providers_circuit(observed: Stack) -> None:
    answer = requests.get(f"{observed.http_url}/health", timeout=5)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["status"] == "ok"
    assert body["providers"]["openai"] == {"circuit": "closed"} and "anthropic" in body["providers"]


def test_envoy_stats_are_on_the_loopback_admin_port(observed: Stack) -> None:
    text = requests.get(f"http://127.0.0.1:{observed.admin_port}/stats/prometheus", timeout=5).text
    assert "envoy_cluster_upstream_rq" in text
    rendered = observed.envoy_config.read_text()
    assert (
        f"admin:\n  address: {{socket_address: {{address: 127.0.0.1, port_value: {observed.admin_port}}}}}" in rendered
    )
