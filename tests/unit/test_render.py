"""gateway/render.py: every config it renders passes `envoy --mode validate` (static loopback
endpoints and STRICT_DNS, with and without TLS), and the DNS variant differs from the static one
only in how the cluster finds its endpoints, so health checks, outlier detection and retries are
the same in both. Also checks that the Kubernetes example config in deploy/ may listen publicly."""

from __future__ import annotations

import difflib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.paths import DESCRIPTOR, OPENAPI, ROOT
from gateway.render import BULK_PATH, LOCAL_REPLIES, MATCHING_PATH, SHAPED_SURFACES, render, split_host_port
from gateway.stack import envoy_binary
from service.infra.providers.catalog import parse_config
from service.usecases.auth import exposure_problem
from tests.support import self_signed_cert

ENVOY = envoy_binary()
K8S_UPSTREAM = "batchgate-service.default.svc.cluster.local:50051"


def validate(config: str, tmp_path: Path) -> None:
    """Runs `envoy --mode validate` on the config; fails on an error or a deprecated field."""
    path = tmp_path / "envoy.yaml"
    path.write_text(config)
    proc = subprocess.run(
        [ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "OK" in proc.stdout
    assert "Deprecated" not in output, output


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A throwaway certificate and key (Envoy reads both while validating)."""
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def _tls(tls: bool, tls_files: tuple[Path, Path]) -> dict:
    return {"tls_cert": tls_files[0], "tls_key": tls_files[1]} if tls else {}


def _cluster(config: str) -> str:
    return config[config.index("  clusters:") :]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
@pytest.mark.parametrize("ports", [[50051], [40001, 40002, 40003]], ids=["1-endpoint", "3-endpoints"])
def test_static_config_validates(ports: list[int], tls: bool, tls_files, tmp_path: Path) -> None:
    config = render(http_port=8080, grpc_ports=ports, **_tls(tls, tls_files))

    validate(config, tmp_path)
    cluster = _cluster(config)
    assert "    type: STATIC\n" in cluster
    assert re.findall(r"address: 127\.0\.0\.1, port_value: (\d+)", cluster) == [str(p) for p in ports]
    assert ("UpstreamTlsContext" in cluster) is tls


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_unix_socket_endpoints_validate(tls: bool, tls_files, tmp_path: Path) -> None:
    """What `make run` renders: one Unix socket per worker (gateway.stack), TLS or not."""
    sockets = [tmp_path / "worker-0.sock", tmp_path / "worker 1.sock"]
    config = render(http_port=8080, grpc_sockets=sockets, **_tls(tls, tls_files))

    validate(config, tmp_path)
    cluster = _cluster(config)
    assert "    type: STATIC\n" in cluster
    assert re.findall(r"address: \{pipe: \{path: \"([^\"]+)\"\}\}", cluster) == [str(p) for p in sockets]
    assert "socket_address" not in cluster
    assert ("UpstreamTlsContext" in cluster) is tls


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_dns_config_validates(tls: bool, tls_files, tmp_path: Path) -> None:
    config = render(http_port=8080, upstream_dns=K8S_UPSTREAM, bind_host="0.0.0.0", **_tls(tls, tls_files))

    validate(config, tmp_path)
    cluster = _cluster(config)
    assert "    type: STRICT_DNS\n    dns_lookup_family: V4_PREFERRED\n" in cluster
    assert "type: STATIC" not in config
    endpoints = re.findall(r"socket_address: \{address: ([^,]+), port_value: (\d+)\}", cluster)
    assert endpoints == [("batchgate-service.default.svc.cluster.local", "50051")]
    assert "address: 0.0.0.0, port_value: 8080" in config
    assert ("UpstreamTlsContext" in cluster) is tls


def test_dns_config_keeps_health_checks_outlier_detection_and_retries() -> None:
    """Only the cluster type and the endpoint line differ from the static config."""
    static = render(http_port=8080, grpc_ports=[50051]).splitlines()
    dns = render(http_port=8080, upstream_dns=K8S_UPSTREAM).splitlines()

    changed = [
        line
        for line in difflib.unified_diff(static, dns, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert changed == [
        "-    type: STATIC",
        "+    type: STRICT_DNS",
        "+    dns_lookup_family: V4_PREFERRED",
        "-        - endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: 50051}}}",
        "+        - endpoint: {address: {socket_address: "
        "{address: batchgate-service.default.svc.cluster.local, port_value: 50051}}}",
    ]
    text = "\n".join(dns)
    for kept in (
        "grpc_health_check: {service_name: batchgate.v1.BatchService}",
        "outlier_detection:",
        "consecutive_local_origin_failure: 3",
        "retry_on: connect-failure,refused-stream,reset-before-request",
        "envoy.retry_host_predicates.previous_hosts",
        "http2_protocol_options",
    ):
        assert kept in text


def test_cli_renders_the_kubernetes_config(tmp_path: Path) -> None:
    """What deploy/README.md tells users to run, with the assets where the Envoy pod mounts them."""
    assets = tmp_path / "etc-envoy"
    assets.mkdir()
    shutil.copy(DESCRIPTOR, assets / "batchgate.pb")
    shutil.copy(OPENAPI, assets / "openapi.json")
    out = tmp_path / "envoy.yaml"

    subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.render",
            "--upstream-dns",
            K8S_UPSTREAM,
            "--bind-host",
            "0.0.0.0",
            "--stats-port",
            "9902",
            "--assets-dir",
            str(assets),
            "--out",
            str(out),
        ],
        cwd=ROOT,
        check=True,
        timeout=30,
    )

    config = out.read_text()
    assert f"proto_descriptor: {assets / 'batchgate.pb'}" in config
    assert f'filename: "{assets / "openapi.json"}"' in config
    assert "default_source_code: {inline_string: " in config  # the Lua filter comes inside the config
    assert "address: 0.0.0.0, port_value: 9902" in config  # Envoy's stats, for Prometheus
    validate(config, tmp_path)


def test_cli_rejects_a_malformed_upstream(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway.render",
            "--upstream-dns",
            "batchgate-service",
            "--out",
            str(tmp_path / "envoy.yaml"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 2
    assert "expected HOST:PORT" in proc.stderr
    assert not (tmp_path / "envoy.yaml").exists()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("svc.ns.svc.cluster.local:50051", ("svc.ns.svc.cluster.local", 50051)),
        ("10.0.0.7:1", ("10.0.0.7", 1)),
        ("[fd00::7]:50051", ("fd00::7", 50051)),
    ],
)
def test_split_host_port(value: str, expected: tuple[str, int]) -> None:
    assert split_host_port(value) == expected


@pytest.mark.parametrize("value", ["host", "host:", ":50051", "host:0", "host:65536", "host:http"])
def test_split_host_port_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        split_host_port(value)


def test_render_needs_an_upstream() -> None:
    with pytest.raises(ValueError):
        render(http_port=8080)


def test_kubernetes_example_config_is_safe_to_expose() -> None:
    """deploy/service.yaml's config.json loads with deploy/secret.example.yaml's values in the
    environment and enforces auth, so the service accepts `--address 0.0.0.0:50051`."""
    manifest = (ROOT / "deploy" / "service.yaml").read_text()
    block = re.search(r"^  config\.json: \|\n((?:    .*\n|\n)+)", manifest, re.MULTILINE)
    assert block, "deploy/service.yaml: no `config.json: |` block in the ConfigMap"
    data = json.loads("\n".join(line[4:] for line in block.group(1).splitlines()))
    secret = (ROOT / "deploy" / "secret.example.yaml").read_text()
    env = dict(re.findall(r'^  ([A-Z][A-Z0-9_]*): "([^"]*)"$', secret, re.MULTILINE))

    config = parse_config(data, env)

    assert {m for m in re.findall(r'"env\.([A-Z0-9_]+)"', block.group(1))} == set(env)
    assert config.auth_required
    assert not config.client.allow_unauthenticated_public
    assert exposure_problem(config, "0.0.0.0") is None


def _mappers(config: str) -> list[dict]:
    """The local-reply mappers of a rendered config (each is one JSON line)."""
    block = config[config.index("            mappers:\n") : config.index("            body_format:\n")]
    return [json.loads(line.strip()[2:]) for line in block.splitlines()[1:]]


def test_every_local_reply_status_has_its_own_message() -> None:
    """A 501 used to say "batchgate service is unavailable" (one mapper for every 5xx)."""
    statuses = [reply.status for reply in LOCAL_REPLIES]
    assert statuses[-1] is None and len(set(statuses)) == len(statuses)
    assert {500, 501, 502, 503, 504} <= set(statuses)
    messages = {reply.status: reply.message for reply in LOCAL_REPLIES}
    assert "unavailable" in messages[503] and "unavailable" not in messages[501]
    assert "in time" in messages[504]
    # Envoy's own text for a failed upstream names addresses and reset reasons: never passed on.
    assert all("%LOCAL_REPLY_BODY%" not in messages[s] for s in (500, 502, 503, 504))


# Every reply Envoy makes itself, written out (README, Errors), in the order the mappers are tried:
# per status, the Bifrost error code and type, then what each drop-in route calls it: Anthropic's
# error type, Google's canonical status name, AWS's exception name (x-amzn-ErrorType), as those
# providers document them. None: any other status (on the Bifrost routes that is the catch-all
# body format, not a mapper).
LOCAL_REPLY_NAMES = [
    (404, "route_not_found", "invalid_request_error", "not_found_error", "NOT_FOUND", "UnknownOperationException"),
    (405, "method_not_allowed", "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT",
     "ValidationException"),
    (408, "request_timeout", "invalid_request_error", "invalid_request_error", "DEADLINE_EXCEEDED",
     "RequestTimeoutException"),
    (413, "request_too_large", "invalid_request_error", "request_too_large", "INVALID_ARGUMENT", "ValidationException"),
    (500, "internal_error", "internal_error", "api_error", "INTERNAL", "InternalServerException"),
    (501, "not_implemented", "invalid_request_error", "invalid_request_error", "UNIMPLEMENTED", "ValidationException"),
    (502, "upstream_unavailable", "upstream_error", "api_error", "UNAVAILABLE", "ServiceUnavailableException"),
    (503, "upstream_unavailable", "upstream_error", "api_error", "UNAVAILABLE", "ServiceUnavailableException"),
    (504, "upstream_timeout", "timeout_error", "timeout_error", "DEADLINE_EXCEEDED", "ServiceUnavailableException"),
    (None, "invalid_request", "invalid_request_error", "invalid_request_error", "INVALID_ARGUMENT",
     "ValidationException"),
]  # fmt: skip


def _names(surface: str | None, mapper: dict) -> tuple[str, ...]:
    """What a local reply mapper calls its error on `surface` (None: the Bifrost routes)."""
    body = mapper["body_format_override"]["json_format"]
    if surface == "anthropic":
        return (body["error"]["type"],)
    if surface == "genai":
        return (body["error"]["status"],)
    if surface == "bedrock":
        return tuple(h["header"]["value"] for h in mapper["headers_to_add"] if h["header"]["key"] == "x-amzn-errortype")
    return body["error"]["code"], body["error"]["type"]


def _grpc_mappers(mappers: list[dict]) -> list[dict]:
    """The mappers for native gRPC callers (they come first: first match wins)."""
    grpc = [m for m in mappers if "application/grpc" in json.dumps(m["filter"])]
    assert mappers[: len(grpc)] == grpc
    return grpc


@pytest.mark.parametrize("surface", ["anthropic", "genai", "bedrock", None])
def test_each_route_answers_envoys_own_replies_with_the_documented_names(surface: str | None) -> None:
    mappers = _mappers(render(http_port=8080, grpc_ports=[50051]))
    rendered = []
    for mapper in mappers[len(_grpc_mappers(mappers)) + 1 :]:  # after GET /openapi.json's 200 too
        text = json.dumps(mapper["filter"])
        on_surface = f'"prefix": "/{surface}/"' in text if surface else '"prefix": "/' not in text
        if on_surface:
            status = re.search(r'"default_value": (\d+)', text)
            rendered.append((int(status.group(1)) if status else None, *_names(surface, mapper)))
    columns = {None: slice(1, 3), "anthropic": slice(3, 4), "genai": slice(4, 5), "bedrock": slice(5, 6)}[surface]
    expected = [(row[0], *row[columns]) for row in LOCAL_REPLY_NAMES]
    assert rendered == (expected if surface else expected[:-1])  # Bifrost's catch-all is body_format


def test_native_grpc_mapper_matches_only_what_envoy_calls_grpc() -> None:
    grpc_mapper = _grpc_mappers(_mappers(render(http_port=8080, grpc_ports=[50051])))[-1]
    regex = re.compile(json.dumps(grpc_mapper).split('"regex": "')[1].split('"')[0].replace("\\\\", "\\"))
    assert regex.fullmatch("application/grpc") and regex.fullmatch("application/grpc+proto")
    for rest in ("application/grpc-web", "application/grpcfoo", "application/grpc-web+proto", "application/json"):
        assert not regex.fullmatch(rest)


def test_native_grpc_local_replies_carry_the_code_that_names_them() -> None:
    """Envoy alone would answer a gRPC caller whose request did not arrive in time UNKNOWN, one too
    large UNKNOWN and one refused as malformed INTERNAL."""
    grpc = _grpc_mappers(_mappers(render(http_port=8080, grpc_ports=[50051])))
    codes = {}
    for mapper in grpc[:-1]:
        status = int(re.search(r'"default_value": (\d+)', json.dumps(mapper["filter"])).group(1))
        [header] = mapper["headers_to_add"]
        assert header["header"]["key"] == "grpc-status"
        codes[status] = int(header["header"]["value"])
    assert codes == {400: 3, 408: 4, 413: 8}
    assert "headers_to_add" not in grpc[-1]  # the rest: Envoy's own mapping, Envoy's own words


def test_the_benchmarks_edge_without_bounds_validates_and_lacks_only_them(tmp_path: Path) -> None:
    """bench/bounds_cost.py compares the gateway with the edge of before issue 21 (`limits=None`)."""
    bounded = render(http_port=8080, grpc_ports=[50051])
    unbounded = render(http_port=8080, grpc_ports=[50051], limits=None)

    validate(unbounded, tmp_path)
    for part in ("overload_manager:", "envoy.filters.http.buffer", "max_concurrent_streams:", "max_requests:"):
        assert part in bounded and part not in unbounded, part
    for marker in ("#<bounds", "#bounds>", "#<unbounded", "#unbounded>"):
        assert f"\n{marker}" not in bounded.replace(" ", "") and f"\n{marker}" not in unbounded.replace(" ", "")
    assert "grpc_json_transcoder" in unbounded and "use_remote_address: true" in unbounded


def test_each_drop_in_api_words_every_local_reply() -> None:
    statuses = {reply.status for reply in LOCAL_REPLIES}
    assert [surface.name for surface in SHAPED_SURFACES] == ["anthropic", "genai", "bedrock"]
    for surface in SHAPED_SURFACES:
        assert set(surface.shape.local_words) == statuses, surface.name


def test_routes_the_config_names_come_from_the_proto() -> None:
    config = render(http_port=8080, grpc_ports=[50051])
    assert (BULK_PATH, MATCHING_PATH) == ("/v1/batches/cancel", "/v1/batches:cancelMatching")
    regexes = [re.compile(json.loads(m)) for m in re.findall(r'safe_regex: \{regex: ("[^"]*")\}', config)]
    bulk = next(r for r in regexes if r.match(BULK_PATH))
    assert [p for p in (BULK_PATH, MATCHING_PATH, BULK_PATH + "/", "/v1/batches/b/cancel") if bulk.match(p)] == [
        BULK_PATH,
        MATCHING_PATH,
    ]
    long = next(r for r in regexes if r.match("/batchgate.v1.BatchService/Cancel"))
    rpcs = ["/batchgate.v1.BatchService/" + m for m in ("Cancel", "CancelMany", "CancelAnthropic", "Health")]
    rpcs.append("/google.longrunning.Operations/WaitOperation")
    assert [rpc for rpc in rpcs if long.match(rpc)] == [
        "/batchgate.v1.BatchService/Cancel",
        "/batchgate.v1.BatchService/CancelMany",
        "/google.longrunning.Operations/WaitOperation",
    ]


def test_the_one_200_envoy_makes_itself_keeps_its_body() -> None:
    """GET /openapi.json is a direct response: a local reply, which must not be wrapped in an error body."""
    mappers = _mappers(render(http_port=8080, grpc_ports=[50051]))
    mapper = mappers[len(_grpc_mappers(mappers))]
    assert '"default_value": 200' in json.dumps(mapper["filter"])
    assert mapper["body_format_override"]["text_format_source"] == {"inline_string": "%LOCAL_REPLY_BODY%"}
    assert mapper["body_format_override"]["content_type"] == "application/json"


def test_codegen_imports_before_anything_is_generated():
    """A fresh checkout runs `python -m gateway.codegen` (make proto, the image build) before
    service/gen exists: it may not need the generated stubs."""
    import subprocess
    import sys

    from gateway.paths import ROOT

    code = (
        "import sys\n"
        "class NoGeneratedCode:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'service.gen' or name.startswith('service.gen.'):\n"
        "            raise ImportError(name)\n"
        "sys.meta_path.insert(0, NoGeneratedCode())\n"
        "import gateway.codegen\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)
