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
) -> str:
    """Returns the Envoy YAML for one edge listener in front of the given service ports."""
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
    )


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
