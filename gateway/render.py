"""Renders gateway/envoy.yaml.tmpl into a runnable Envoy config.

    python -m gateway.render --out build/envoy.yaml --http-port 8080 --grpc-port 50051
    python -m gateway.render --out build/envoy-k8s.yaml --bind-host 0.0.0.0 \
        --upstream-dns batchgate-service.default.svc.cluster.local:50051 --assets-dir /etc/envoy

The first balances over service ports on loopback (what `make run` does); the second over every
address a DNS name resolves to (STRICT_DNS), e.g. a Kubernetes headless Service with one address per
ready pod. Both keep the same gRPC health checks, outlier detection and retries.
"""

from __future__ import annotations

import argparse
import json
import string
from collections.abc import Sequence
from pathlib import Path

from service.model import MAX_WAIT_SECONDS

# A bulk cancel's largest body: MAX_BULK_ITEMS items with 512-byte ids and the JSON around them,
# below the service's 1 MiB gRPC message limit (service/server.py) so Envoy refuses a larger one
# with its own 413 instead of the service's gRPC RESOURCE_EXHAUSTED.
BULK_MAX_REQUEST_BYTES = 768 * 1024

GATEWAY_DIR = Path(__file__).resolve().parent
ROOT = GATEWAY_DIR.parent
TEMPLATE = GATEWAY_DIR / "envoy.yaml.tmpl"
LUA_FILE = GATEWAY_DIR / "errors.lua"
DESCRIPTOR = ROOT / "build" / "batchgate.pb"


def render(
    *,
    http_port: int,
    grpc_ports: Sequence[int] = (),
    upstream_dns: str | None = None,
    admin_port: int = 9901,
    bind_host: str = "127.0.0.1",
    route_timeout_s: float = 60.0,
    descriptor: Path = DESCRIPTOR,
    lua_file: Path = LUA_FILE,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> str:
    """Returns the Envoy YAML for one edge listener in front of the service: the given ports on
    127.0.0.1, or with `upstream_dns` ("host:port") every address that name resolves to. With a
    certificate and key the edge serves HTTPS (and gRPC over TLS), and talks TLS to the service,
    which then serves TLS too (the hop to the service is encrypted but not verified)."""
    if upstream_dns:
        host, port = split_host_port(upstream_dns)
        endpoints = _endpoint(host, port)
    elif grpc_ports:
        endpoints = "\n".join(_endpoint("127.0.0.1", port) for port in grpc_ports)
    else:
        raise ValueError("give grpc_ports or upstream_dns")
    config = string.Template(TEMPLATE.read_text()).substitute(
        HTTP_PORT=http_port,
        ADMIN_PORT=admin_port,
        BIND_HOST=bind_host,
        ROUTE_TIMEOUT=f"{route_timeout_s:g}s",
        WAIT_ROUTE_TIMEOUT=f"{MAX_WAIT_SECONDS + route_timeout_s:g}s",
        BULK_MAX_REQUEST_BYTES=BULK_MAX_REQUEST_BYTES,
        LUA_FILE=lua_file,
        DESCRIPTOR=descriptor,
        SURFACE_MAPPERS=_surface_mappers(),
        ENDPOINTS=endpoints,
        LISTENER_TLS=_listener_tls(tls_cert, tls_key) if tls_cert else "",
        CLUSTER_TLS=_CLUSTER_TLS if tls_cert else "",
    )
    if upstream_dns:
        # The template fixes the cluster type; this is its one line that says so.
        if config.count(_STATIC_CLUSTER) != 1:
            raise RuntimeError(f"{TEMPLATE.name}: expected exactly one {_STATIC_CLUSTER.strip()!r} line")
        config = config.replace(_STATIC_CLUSTER, _DNS_CLUSTER)
    return config


def split_host_port(value: str) -> tuple[str, int]:
    """Splits "host:port" (or "[v6]:port"); ValueError when it is not one."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _endpoint(host: str, port: int) -> str:
    return f"        - endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}"


_STATIC_CLUSTER = "    type: STATIC\n"
# Every address the name resolves to is one endpoint, re-resolved every 5 s (Envoy's default): a
# headless Service answers with its ready pods' addresses. V4_PREFERRED: the IPv4 addresses when
# there are any, so a dual-stack pod is one endpoint, not two; IPv6-only clusters still work.
_DNS_CLUSTER = """\
    type: STRICT_DNS
    dns_lookup_family: V4_PREFERRED
"""


_CLUSTER_TLS = """\
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context: {alpn_protocols: [h2]}
"""


def _listener_tls(cert: Path, key: Path) -> str:
    return f"""transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{filename: {cert}}}
              private_key: {{filename: {key}}}
      """


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--http-port", type=int, default=8080)
    upstream = parser.add_mutually_exclusive_group()
    upstream.add_argument("--grpc-port", type=int, action="append", default=[], help="a service port on 127.0.0.1")
    upstream.add_argument(
        "--upstream-dns", metavar="HOST:PORT", help="balance over every address HOST resolves to (STRICT_DNS)"
    )
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--bind-host", default="127.0.0.1")
    parser.add_argument(
        "--assets-dir", type=Path, help="where Envoy will find batchgate.pb and errors.lua (default: this checkout)"
    )
    args = parser.parse_args()
    assets = {}
    if args.assets_dir:
        assets = {"descriptor": args.assets_dir / DESCRIPTOR.name, "lua_file": args.assets_dir / LUA_FILE.name}
    try:
        config = render(
            http_port=args.http_port,
            grpc_ports=args.grpc_port or [50051],
            upstream_dns=args.upstream_dns,
            admin_port=args.admin_port,
            bind_host=args.bind_host,
            **assets,
        )
    except ValueError as exc:
        parser.error(f"--upstream-dns: {exc}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(config)


# Envoy's own refusals (no route, malformed body, unknown query parameter, service down) on the
# drop-in SDK routes, in each provider's error envelope: (status filter, body, extra headers) per
# surface, first match wins. Bodies are Envoy json_format; `%RESPONSE_CODE%` prints as a number.
_NO_ROUTE = "no route for %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
_DOWN = "batchgate service is unavailable"
_SURFACE_ERRORS: dict[str, list[tuple[str, dict, dict[str, str]]]] = {
    "anthropic": [
        ("404", {"type": "error", "error": {"type": "not_found_error", "message": _NO_ROUTE}}, {}),
        ("5xx", {"type": "error", "error": {"type": "api_error", "message": _DOWN}}, {}),
        ("any", {"type": "error", "error": {"type": "invalid_request_error", "message": "%LOCAL_REPLY_BODY%"}}, {}),
    ],
    "genai": [
        ("404", {"error": {"code": "%RESPONSE_CODE%", "message": _NO_ROUTE, "status": "NOT_FOUND"}}, {}),
        ("5xx", {"error": {"code": "%RESPONSE_CODE%", "message": _DOWN, "status": "UNAVAILABLE"}}, {}),
        ("any", {"error": {"code": "%RESPONSE_CODE%", "message": "%LOCAL_REPLY_BODY%", "status": "INVALID_ARGUMENT"}},
         {}),
    ],
    "bedrock": [
        ("404", {"message": _NO_ROUTE}, {"x-amzn-ErrorType": "UnknownOperationException"}),
        ("5xx", {"message": _DOWN}, {"x-amzn-ErrorType": "ServiceUnavailableException"}),
        ("any", {"message": "%LOCAL_REPLY_BODY%"}, {"x-amzn-ErrorType": "ValidationException"}),
    ],
}
_STATUS_FILTERS = {
    "404": {"status_code_filter": {"comparison": {"op": "EQ", "value": {"default_value": 404, "runtime_key": "lr_404"}}}},
    "5xx": {"status_code_filter": {"comparison": {"op": "GE", "value": {"default_value": 500, "runtime_key": "lr_5xx"}}}},
}


def _surface_mappers() -> str:
    lines = []
    for surface, errors in _SURFACE_ERRORS.items():
        # Before transcoding the path is the REST one; after, Envoy keeps it in x-envoy-original-path.
        on_surface = {"or_filter": {"filters": [
            {"header_filter": {"header": {"name": name, "string_match": {"prefix": f"/{surface}/"}}}}
            for name in (":path", "x-envoy-original-path")
        ]}}
        for status, body, headers in errors:
            filters = [on_surface] + ([_STATUS_FILTERS[status]] if status in _STATUS_FILTERS else [])
            mapper = {
                "filter": {"and_filter": {"filters": filters}} if len(filters) > 1 else on_surface,
                "body_format_override": {"json_format": body},
                "headers_to_add": [{"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                                   for k, v in headers.items()],
            }
            lines.append("            - " + json.dumps(mapper))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
