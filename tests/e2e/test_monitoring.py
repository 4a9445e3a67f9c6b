"""Every metric the alert rules and the Grafana dashboard (deploy/monitoring/) read exists on a running
gateway: a sandbox-mode gateway gets a little traffic (a cancel, a refused one, a bulk), then its
service's /metrics and its Envoy's Prometheus stats (what the edge pods serve on :9902) are read, and
each name a rule or a panel queries must be among their samples. A metric that only appears once
something went wrong would leave its alert silent and its panel empty until then."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import promql_parser
import pytest
import requests
import yaml

from gateway.stack import Stack, free_port
from tests.e2e.conftest import SimAdmin, new_id
from tests.unit.test_monitoring import DASHBOARD, RULES, dashboard_queries


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    stack = Stack(
        config=None,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        metrics_port=free_port(),
        log_dir=Path(tmp_path_factory.mktemp("monitoring-logs")),
    )
    stack.start(timeout=30)
    try:
        sim = SimAdmin(stack.sandbox_url)
        base = stack.http_url
        ok = sim.seed("openai")
        answers = [
            requests.post(f"{base}/v1/batches/{ok}/cancel?provider=openai", timeout=10),
            requests.post(f"{base}/v1/batches/{new_id()}/cancel", timeout=10),  # no provider: 400
            requests.post(
                f"{base}/v1/batches/cancel",
                json={"batches": [{"id": sim.seed("anthropic"), "provider": "anthropic"}]},
                timeout=10,
            ),
        ]
        assert [a.status_code for a in answers] == [200, 400, 200]
        service = requests.get(f"http://127.0.0.1:{stack.metrics_port}/metrics", timeout=10).text
        envoy = requests.get(f"http://127.0.0.1:{stack.admin_port}/stats/prometheus", timeout=10).text
        yield {"batchgate_": sample_names(service), "envoy_": sample_names(envoy)}
    finally:
        stack.stop()


def sample_names(exposition: str) -> set[str]:
    return {
        re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0) for line in exposition.splitlines() if line[:1].isalpha()
    }


def metric_names(expr: str) -> set[str]:
    names: set[str] = set()

    def visit(node: object) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


def queried() -> dict[str, set[str]]:
    """Metric name -> where it is read (alert names, panel titles)."""
    where: dict[str, set[str]] = {}
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            for name in metric_names(rule["expr"]):
                where.setdefault(name, set()).add(f"alert {rule['alert']}")
    dashboard = json.loads(DASHBOARD.read_text())
    for expr in dashboard_queries(dashboard):
        label_values = re.fullmatch(r"label_values\((\w+),\s*\w+\)", expr)
        for name in {label_values.group(1)} if label_values else metric_names(expr):
            where.setdefault(name, set()).add("dashboard")
    return where


def test_the_rules_and_the_dashboard_read_metrics_the_gateway_has(scraped: dict[str, set[str]]) -> None:
    where = queried()
    assert {"batchgate_requests_total", "envoy_cluster_membership_healthy"} <= set(where)
    missing = {}
    for name, readers in sorted(where.items()):
        source = next((prefix for prefix in scraped if name.startswith(prefix)), None)
        assert source, f"{name}: neither a batchgate_ nor an envoy_ metric"
        if name not in scraped[source]:
            missing[name] = sorted(readers)
    assert not missing, f"read by the rules or the dashboard but not on /metrics: {missing}"
