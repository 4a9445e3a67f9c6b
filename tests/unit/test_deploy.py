"""deploy/: every manifest valid for Kubernetes (kubernetes-validate --strict, the schemas shipped in
the package: no network), and what a reviewer checks on each workload, by machine: requests and a
memory limit, non-root, read-only root filesystem with an emptyDir wherever it writes, no
privilege escalation, all capabilities dropped, probes, metrics a Prometheus finds; the HPA, the
disruption budgets, the NetworkPolicies and the kustomization that applies it all."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from gateway.paths import ROOT

DEPLOY = ROOT / "deploy"
# Native gRPC probes are GA from 1.27; the newest the package ships is what clusters run next.
KUBERNETES_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
MANIFESTS = sorted(p for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def resources(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


ALL = [doc for path in MANIFESTS for doc in resources(path)]


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in ALL if doc["kind"] == kind}


DEPLOYMENTS = of_kind("Deployment")


def selects(selector: dict, deployment: dict) -> bool:
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_every_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for doc in resources(path):
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError


def test_the_cli_validates_them_too() -> None:
    """What an operator runs by hand (the venv's kubernetes-validate, pinned)."""
    cli = Path(sys.executable).parent / "kubernetes-validate"
    proc = subprocess.run(
        [str(cli), "--strict", "--quiet", *map(str, MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", sorted(DEPLOYMENTS))
def test_every_workload_passes_review(name: str) -> None:
    pod = DEPLOYMENTS[name]["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] > 0 and security["runAsGroup"] > 0
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for container in pod["containers"]:
        where = f"{name}/{container['name']}"
        resources_ = container["resources"]
        assert {"cpu", "memory"} <= set(resources_["requests"]), where
        assert "memory" in resources_["limits"], where
        assert "cpu" not in resources_["limits"], f"{where}: a CPU limit throttles the latency-bound path"
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, where
        assert context["allowPrivilegeEscalation"] is False, where
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"], where
        assert "privileged" not in context, where
        assert container["readinessProbe"] and container["livenessProbe"], where
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            assert mount.get("readOnly") or "emptyDir" in volume, (
                f"{where}: writable {mount['mountPath']} is not an emptyDir"
            )


@pytest.mark.parametrize("name", ["batchgate-service", "batchgate-edge"])
def test_batchgate_pods_run_the_batchgate_image_with_a_writable_tmp(name: str) -> None:
    pod = DEPLOYMENTS[name]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"registry.example.com/batchgate:{VERSION}"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])


def _scrape(deployment: dict) -> tuple[int, str]:
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert int(annotations["prometheus.io/port"]) == ports["metrics"]
    return ports["metrics"], annotations["prometheus.io/path"]


def test_service_pods_are_scrapeable_and_write_only_to_empty_dirs() -> None:
    deployment = DEPLOYMENTS["batchgate-service"]
    port, path = _scrape(deployment)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command, env = container["command"], {e["name"]: e.get("value") for e in container["env"]}
    assert command[command.index("--metrics-port") + 1] == str(port) and path == "/metrics"
    assert env["METRICS_HOST"] == "0.0.0.0", "the metrics port binds 127.0.0.1 otherwise"
    state = command[command.index("--state-dir") + 1]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes[mounts[state]]
    service = of_kind("Service")["batchgate-service"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]}["metrics"] == port


def test_edge_pods_serve_envoys_stats_where_the_annotations_say(tmp_path: Path) -> None:
    port, path = _scrape(DEPLOYMENTS["batchgate-edge"])
    assert path == "/stats/prometheus"
    subprocess.run(
        ["make", "--no-print-directory", "deploy-config", f"DEPLOY_GENERATED={tmp_path}"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=120,
    )
    config = (tmp_path / "envoy.yaml").read_text()
    assert re.search(rf"name: stats\n    address: {{socket_address: {{address: 0.0.0.0, port_value: {port}}}}}", config)
    assert "match: {path: /stats/prometheus" in config
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    (envoy,) = [g for g in kustomization["configMapGenerator"] if g["name"] == "batchgate-envoy"]
    assert sorted(Path(f).name for f in envoy["files"]) == sorted(p.name for p in tmp_path.iterdir())
    assert all(f.startswith("generated/") for f in envoy["files"])


def test_the_service_scales_on_cpu_and_keeps_replicas_through_disruptions() -> None:
    (hpa,) = of_kind("HorizontalPodAutoscaler").values()
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "batchgate-service")
    assert "replicas" not in DEPLOYMENTS["batchgate-service"]["spec"], "the HPA owns the replica count"
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    budgets = of_kind("PodDisruptionBudget").values()
    for name in ("batchgate-service", "batchgate-edge"):
        assert any(selects(b["spec"]["selector"], DEPLOYMENTS[name]) for b in budgets), f"no PDB for {name}"


def test_only_the_edge_reaches_the_service_port_and_only_the_service_reaches_redis() -> None:
    policies = of_kind("NetworkPolicy")
    for name, port, client in (("batchgate-service", 50051, "edge"), ("batchgate-redis", 6379, "service")):
        (policy,) = [p for p in policies.values() if selects(p["spec"]["podSelector"], DEPLOYMENTS[name])]
        rules = [r for r in policy["spec"]["ingress"] if any(p["port"] == port for p in r["ports"])]
        assert len(rules) == 1
        (peer,) = rules[0]["from"]
        assert peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == client


def test_the_kustomization_applies_every_manifest_but_the_example_secret() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in MANIFESTS} - {"secret.example.yaml"}
    for generator in kustomization["configMapGenerator"]:
        for file in generator["files"]:
            assert file.startswith("generated/") or (DEPLOY / file).is_file(), file
    referenced = {
        v["configMap"]["name"]
        for d in DEPLOYMENTS.values()
        for v in d["spec"]["template"]["spec"].get("volumes", [])
        if "configMap" in v
    }
    made = {g["name"] for g in kustomization["configMapGenerator"]} | set(of_kind("ConfigMap"))
    assert referenced <= made


def test_the_compose_config_loads_and_points_every_provider_at_the_sandbox() -> None:
    from sandbox.server import gateway_config
    from service.infra.providers.catalog import load_config

    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    batchgate = compose["services"]["batchgate"]
    env = batchgate["environment"]
    config = load_config(DEPLOY / "compose.config.json", env)
    assert config.auth_required, "the edge listens on all addresses: auth must be on"
    raw = json.loads((DEPLOY / "compose.config.json").read_text())
    assert raw["providers"] == gateway_config("http://sandbox:8090")["providers"]
    assert raw["governance"]["store"]["url"].startswith("redis://redis:")
    sandbox = compose["services"]["sandbox"]["command"]
    assert sandbox[sandbox.index("--port") + 1] == "8090"
    assert env["CONFIG"] == batchgate["volumes"][0].split(":")[1]
