"""deploy/monitoring/: the alert rules pass `promtool check rules` and their unit tests (`promtool
test rules`, Debian's prometheus package, which `make test` installs), and the Grafana dashboard is
one Grafana can import: every panel reads the dashboard's Prometheus variable with PromQL that
parses. tests/e2e/test_monitoring.py checks that every metric they read exists."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from gateway.paths import ROOT

MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "alerts.yaml"
DASHBOARD = MONITORING / "dashboard.json"
# page: someone acts now; ticket: during working hours.
SEVERITIES = {"page", "ticket"}


def promtool(*args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail("promtool is not installed: `make test` installs it (apt-get install prometheus)")
    return subprocess.run([binary, *args], cwd=MONITORING, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_rules() -> None:
    proc = promtool("check", "rules", RULES.name)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_the_rules_unit_tests_pass() -> None:
    proc = promtool("test", "rules", "alerts.test.yaml")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_is_tested_and_says_what_to_do() -> None:
    rules = [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]
    tests = yaml.safe_load((MONITORING / "alerts.test.yaml").read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test["alert_rule_test"] if case.get("exp_alerts")}
    quiet = {case["alertname"] for test in tests for case in test["alert_rule_test"] if not case.get("exp_alerts")}
    for rule in rules:
        assert rule["alert"] in fired and rule["alert"] in quiet, (
            f"{rule['alert']}: no test fires it and keeps it quiet"
        )
        assert rule["labels"]["severity"] in SEVERITIES
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def dashboard_queries(dashboard: dict) -> list[str]:
    """Every PromQL expression of the dashboard (panels and variables), Grafana's own range variable
    replaced by a duration so that it parses as PromQL."""
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return [e.replace("$__rate_interval", "5m") for e in exprs]


def test_the_dashboard_reads_its_prometheus_variable_with_valid_promql() -> None:
    import promql_parser

    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] == "row":  # a heading over the panels below it
            assert "targets" not in panel and panel["gridPos"]["w"] == 24, panel["title"]
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
    for expr in dashboard_queries(dashboard):
        if expr.startswith("label_values("):
            continue  # Grafana's query, not PromQL
        promql_parser.parse(expr)  # raises on invalid PromQL


def test_the_operations_row_shows_every_operations_metric() -> None:
    from prometheus_client import REGISTRY

    import service.infra.observability  # noqa: F401 - registers the service's metrics

    panels = json.loads(DASHBOARD.read_text())["panels"]
    (start,) = [i for i, p in enumerate(panels) if p["type"] == "row" and p["title"].startswith("Operations")]
    rows_after = [i for i, p in enumerate(panels) if p["type"] == "row" and i > start]
    below = panels[start + 1 : rows_after[0] if rows_after else len(panels)]
    read = " ".join(t["expr"] for p in below for t in p["targets"])
    names = {
        metric.name + ("_total" if metric.type == "counter" else "")
        for metric in REGISTRY.collect()
        if metric.name.startswith(("batchgate_operation_", "batchgate_operations_"))
    }
    assert len(names) == 4, names
    for name in names:
        assert re.search(rf"\b{name}\b", read), f"{name} is on no panel of the operations row"


def test_the_kustomization_ships_both() -> None:
    kustomization = yaml.safe_load((ROOT / "deploy" / "kustomization.yaml").read_text())
    files = {f for g in kustomization["configMapGenerator"] for f in g["files"]}
    assert {"monitoring/alerts.yaml", "monitoring/dashboard.json"} <= files
