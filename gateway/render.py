"""Renders gateway/envoy.yaml.tmpl into a runnable Envoy config.

    python -m gateway.render --out build/envoy.yaml --http-port 8080 --grpc-port 50051
"""

from __future__ import annotations

import argparse
import string
from pathlib import Path

GATEWAY_DIR = Path(__file__).resolve().parent
ROOT = GATEWAY_DIR.parent
TEMPLATE = GATEWAY_DIR / "envoy.yaml.tmpl"
LUA_FILE = GATEWAY_DIR / "errors.lua"
DESCRIPTOR = ROOT / "build" / "batchgate.pb"


def render(
    *,
    http_port: int,
    grpc_ports: list[int],
    admin_port: int = 9901,
    bind_host: str = "127.0.0.1",
    route_timeout_s: float = 60.0,
    descriptor: Path = DESCRIPTOR,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
) -> str:
    """Returns the Envoy YAML for one edge listener in front of the given service ports. With a
    certificate and key the edge serves HTTPS (and gRPC over TLS), and talks TLS to the service,
    which then serves TLS too (the loopback hop is encrypted but not verified)."""
    endpoints = "\n".join(
        f"        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}}}"
        for port in grpc_ports
    )
    return string.Template(TEMPLATE.read_text()).substitute(
        HTTP_PORT=http_port,
        ADMIN_PORT=admin_port,
        BIND_HOST=bind_host,
        ROUTE_TIMEOUT=f"{route_timeout_s:g}s",
        LUA_FILE=LUA_FILE,
        DESCRIPTOR=descriptor,
        ENDPOINTS=endpoints,
        LISTENER_TLS=_listener_tls(tls_cert, tls_key) if tls_cert else "",
        CLUSTER_TLS=_CLUSTER_TLS if tls_cert else "",
    )


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
    parser.add_argument("--grpc-port", type=int, action="append", default=[])
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--bind-host", default="127.0.0.1")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        render(
            http_port=args.http_port,
            grpc_ports=args.grpc_port or [50051],
            admin_port=args.admin_port,
            bind_host=args.bind_host,
        )
    )


if __name__ == "__main__":
    main()
