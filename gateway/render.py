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
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.longrunning import operations_pb2

from gateway.paths import DESCRIPTOR, GATEWAY_DIR, OPENAPI
from service.domain.errors import CATALOGUE, CODES
from service.domain.model import MAX_WAIT_SECONDS
from service.edge import envelope
from service.edge.routes import _VARIABLE, WAITING_RPCS, rest_routes, templates
from service.edge.status import grpc_code_for_http
from service.edge.surfaces import SURFACES, Surface
from service.edge.wire import MAX_MESSAGE_BYTES
from service.gen.batchgate.v1 import batchgate_pb2
from service.infra.observability import REQUEST_ID_HEADER, REQUEST_ID_MAX_LENGTH, REQUEST_ID_PUNCTUATION

# A bulk cancel's largest body: MAX_BULK_ITEMS items with 512-byte ids and the JSON around them,
# below the service's 1 MiB gRPC message limit (service/edge/wire.py) so Envoy refuses a larger one
# with its own 413 instead of the service's gRPC RESOURCE_EXHAUSTED.
BULK_MAX_REQUEST_BYTES = 768 * 1024
_SERVICE = batchgate_pb2.DESCRIPTOR.services_by_name["BatchService"]
_OPERATIONS = operations_pb2.DESCRIPTOR.services_by_name["Operations"]
# CancelMany's one REST route (its body may be larger), read from the proto's http option.
(BULK_PATH,) = templates(_SERVICE.methods_by_name["CancelMany"])
# CancelMatching's explicit batches: up to 1,000 too, under the same body limit.
(MATCHING_PATH,) = templates(_SERVICE.methods_by_name["CancelMatching"])
# A done operation's REST answer lists every batch it matched: ~400 bytes of JSON each, ~40 MB at
# the 100,000 cap (the service's gRPC send limit, service/edge/server.py, is 64 MiB as well).
OPERATIONS_MAX_RESPONSE_BYTES = 64 << 20
# The gRPC methods that may run as long as the longest wait: the RPCs whose request may wait
# (service.edge.routes.WAITING_RPCS: Cancel and CancelMany) and WaitOperation.
LONG_RPCS = (
    *(f"/{_SERVICE.full_name}/{name}" for name in WAITING_RPCS),
    f"/{_OPERATIONS.full_name}/{_OPERATIONS.methods_by_name['WaitOperation'].name}",
)
# Every other REST body (single cancels carry a provider at most) and gRPC message but the cancels'.
MAX_REQUEST_BYTES = 64 * 1024
# A native gRPC Cancel or CancelMany through the edge: the service's own limit and the frame header.
GRPC_MAX_REQUEST_BYTES = MAX_MESSAGE_BYTES + 5


@dataclass(frozen=True)
class EdgeLimits:
    """What the edge lets all callers together hold (what one caller may hold is the service's
    business: client.limits). Defaults follow Envoy's edge best practices, sized for one machine."""

    # Open downstream connections, all listeners together (overload manager); more are refused.
    max_connections: int = 10_000
    # Streams one HTTP/2 connection may have open; more are refused (REFUSED_STREAM).
    max_streams_per_connection: int = 100
    # Envoy's heap: from 85 % the streams buffering most are reset, at 95 % new requests get 503.
    max_heap_bytes: int = 1 << 30
    # Calls in flight to the service (the cluster's DEFAULT circuit breaker), and health calls (HIGH).
    max_upstream_requests: int = 4096
    max_health_requests: int = 256
    # Seconds a request may take to arrive: its headers, and the whole of it.
    request_headers_timeout_s: float = 10.0


TEMPLATE = GATEWAY_DIR / "envoy.yaml.tmpl"
LUA_FILE = GATEWAY_DIR / "errors.lua"
LUA_ENVELOPE_MARKER = "--@ENVELOPE@--"
# The OpenAPI document (gateway/openapi.py, made by `make proto`, at OPENAPI) is what the edge serves itself.
OPENAPI_PATH = "/openapi.json"
OPENAPI_MAX_BYTES = 1024 * 1024


def render(
    *,
    http_port: int,
    grpc_ports: Sequence[int] = (),
    grpc_sockets: Sequence[str | Path] = (),
    upstream_dns: str | None = None,
    admin_port: int = 9901,
    bind_host: str = "127.0.0.1",
    route_timeout_s: float = 60.0,
    request_timeout_s: float = 10.0,
    limits: EdgeLimits | None = EdgeLimits(),
    descriptor: Path = DESCRIPTOR,
    openapi: Path = OPENAPI,
    lua_file: Path = LUA_FILE,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    stats_port: int | None = None,
) -> str:
    """Returns the Envoy YAML for one edge listener in front of the service: the given ports on
    127.0.0.1, the given Unix socket paths (`grpc_sockets`: one worker each, the cheaper hop on one
    machine), or with `upstream_dns` ("host:port") every address that name resolves to. With a
    certificate and key the edge serves HTTPS (and gRPC over TLS), and talks TLS to the service,
    which then serves TLS too (the hop to the service is encrypted but not verified). A request
    that has not fully arrived after `request_timeout_s` gets a 408 (gRPC: DEADLINE_EXCEEDED). With
    `stats_port`, a listener of its own on `bind_host` serves Envoy's Prometheus stats (only
    GET /stats/prometheus of the admin, which stays on 127.0.0.1) for a scraper. `limits` bounds
    what all callers together may hold (None: no bounds at all, the edge before issue 21, only for
    the benchmark's comparison: bench/bounds_cost.py)."""
    bounded = limits is not None
    limits = limits or EdgeLimits()
    if upstream_dns:
        host, port = split_host_port(upstream_dns)
        endpoints = _endpoint(host, port)
    elif grpc_ports or grpc_sockets:
        endpoints = "\n".join(
            [*(_endpoint("127.0.0.1", port) for port in grpc_ports), *(_pipe_endpoint(path) for path in grpc_sockets)]
        )
    else:
        raise ValueError("give grpc_ports, grpc_sockets or upstream_dns")
    config = string.Template(TEMPLATE.read_text()).substitute(
        HTTP_PORT=http_port,
        ADMIN_PORT=admin_port,
        BIND_HOST=bind_host,
        ROUTE_TIMEOUT=f"{route_timeout_s:g}s",
        WAIT_ROUTE_TIMEOUT=f"{MAX_WAIT_SECONDS + route_timeout_s:g}s",
        BULK_MAX_REQUEST_BYTES=BULK_MAX_REQUEST_BYTES,
        BULK_PATHS_REGEX=_exact_paths((BULK_PATH, MATCHING_PATH)),
        OPERATIONS_MAX_RESPONSE_BYTES=OPERATIONS_MAX_RESPONSE_BYTES,
        LONG_RPCS_REGEX=_exact_paths(LONG_RPCS),
        REQUEST_TIMEOUT=f"{request_timeout_s:g}s",
        REQUEST_HEADERS_TIMEOUT=f"{min(request_timeout_s, limits.request_headers_timeout_s):g}s",
        MAX_REQUEST_BYTES=MAX_REQUEST_BYTES,
        GRPC_MAX_REQUEST_BYTES=GRPC_MAX_REQUEST_BYTES,
        MAX_CONNECTIONS=limits.max_connections,
        MAX_STREAMS_PER_CONNECTION=limits.max_streams_per_connection,
        MAX_HEAP_BYTES=limits.max_heap_bytes,
        MAX_UPSTREAM_REQUESTS=limits.max_upstream_requests,
        MAX_HEALTH_REQUESTS=limits.max_health_requests,
        LUA_SOURCE=json.dumps(lua_source(lua_file)),
        DESCRIPTOR=descriptor,
        OPENAPI=openapi,
        OPENAPI_PATH=OPENAPI_PATH,
        OPENAPI_MAX_BYTES=OPENAPI_MAX_BYTES,
        LOCAL_REPLY_MAPPERS=_local_reply_mappers(),
        DEFAULT_LOCAL_REPLY=_default_local_reply(),
        ENDPOINTS=endpoints,
        LISTENER_TLS=_listener_tls(tls_cert, tls_key) if tls_cert else "",
        CLUSTER_TLS=_CLUSTER_TLS if tls_cert else "",
        STATS_LISTENER=_stats_listener(bind_host, stats_port) if stats_port else "",
        STATS_CLUSTER=_STATS_CLUSTER.format(admin_port=admin_port) if stats_port else "",
    )
    config = _bounds(config, bounded)
    if upstream_dns:
        # The template fixes the cluster type; this is its one line that says so.
        if config.count(_STATIC_CLUSTER) != 1:
            raise RuntimeError(f"{TEMPLATE.name}: expected exactly one {_STATIC_CLUSTER.strip()!r} line")
        config = config.replace(_STATIC_CLUSTER, _DNS_CLUSTER)
    return config


def _bounds(config: str, bounded: bool) -> str:
    """The config with its `#<bounds` ... `#bounds>` parts (bounded) or its `#<unbounded` ...
    `#unbounded>` parts (not), and without the marker lines."""
    keep, lines = True, []
    for line in config.splitlines(keepends=True):
        mark = line.strip()
        if mark in ("#<bounds", "#<unbounded"):
            keep = bounded == (mark == "#<bounds")
        elif mark in ("#bounds>", "#unbounded>"):
            keep = True
        elif keep:
            lines.append(line)
    return "".join(lines)


def lua_source(lua_file: Path = LUA_FILE) -> str:
    """The Lua filter's code: gateway/errors.lua with the envelope's constants generated from
    service/edge/envelope.py in place of its marker line (inlined into the config, so a rendered config
    never pairs with a Lua file of another version)."""
    text = lua_file.read_text()
    if text.count(LUA_ENVELOPE_MARKER) != 1:
        raise RuntimeError(f"{lua_file.name}: expected exactly one {LUA_ENVELOPE_MARKER} line")
    generated = [
        envelope.lua_constants(),
        "-- Generated by gateway/render.py from service/infra/observability.py and the proto.",
        f"local REQUEST_ID_HEADER = {json.dumps(REQUEST_ID_HEADER)}",
        f"local REQUEST_ID_MAX_LENGTH = {REQUEST_ID_MAX_LENGTH}",
        f"local REQUEST_ID_UNSAFE = {json.dumps(_lua_unsafe_id_pattern())}",
        f"local BULK_PATH = {json.dumps(BULK_PATH)}",
        f"local MATCHING_PATH = {json.dumps(MATCHING_PATH)}",
        f"local BULK_MAX_REQUEST_BYTES = {BULK_MAX_REQUEST_BYTES}",
        f"local MAX_REQUEST_BYTES = {MAX_REQUEST_BYTES}",
        lua_routes(),
    ]
    return text.replace(LUA_ENVELOPE_MARKER, "\n".join(generated))


def _lua_unsafe_id_pattern() -> str:
    """A Lua pattern matching any character a request id may not hold (`%` escapes punctuation)."""
    return "[^A-Za-z0-9" + "".join("%" + c for c in REQUEST_ID_PUNCTUATION) + "]"


def lua_routes() -> str:
    """The REST routes for the Lua filter (a path of a route with another method is a 405 there), from
    the proto's `google.api.http` bindings: `{Lua pattern, HTTP verb, request type}` each."""
    rows = [
        "{" + ", ".join(json.dumps(value) for value in (lua_pattern(template), verb, request_type)) + "}"
        for service in (_SERVICE, _OPERATIONS)
        for verb, template, request_type in rest_routes(service)
    ]
    return "local ROUTES = {\n  " + ",\n  ".join(rows) + "\n}"


_LUA_MAGIC = re.compile(r"([\^$()%.\[\]*+\-?])")


def lua_pattern(template: str) -> str:
    """A google.api.http path template as an anchored Lua pattern over the raw path: `{name}` and `*`
    match one segment, `**` the rest, `{name=literal/*}` its own template."""

    def segments(text: str) -> str:
        return "/".join(
            ".+" if part == "**" else "[^/]+" if part == "*" else _LUA_MAGIC.sub(r"%\1", part)
            for part in text.split("/")
        )

    out, last = [], 0
    for match in _VARIABLE.finditer(template):
        out.append(segments(template[last : match.start()]))
        out.append(segments(match.group(2) or "*"))
        last = match.end()
    out.append(segments(template[last:]))
    return "^" + "".join(out) + "$"


def _exact_paths(paths: Sequence[str]) -> str:
    """A regex matching exactly these paths, as a YAML double-quoted string holds it."""
    return ("^(" + "|".join(map(re.escape, paths)) + ")$").replace("\\", "\\\\")


def split_host_port(value: str) -> tuple[str, int]:
    """Splits "host:port" (or "[v6]:port"); ValueError when it is not one."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {value!r}")
    return host, int(port)


def _endpoint(host: str, port: int) -> str:
    return f"        - endpoint: {{address: {{socket_address: {{address: {host}, port_value: {port}}}}}}}"


def _pipe_endpoint(path: str | Path) -> str:
    return f"        - endpoint: {{address: {{pipe: {{path: {json.dumps(str(path))}}}}}}}"


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


def _stats_listener(host: str, port: int) -> str:
    router = '{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}'
    return f"""  - name: stats
    address: {{socket_address: {{address: {host}, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: stats
          route_config:
            virtual_hosts:
            - name: stats
              domains: ["*"]
              routes:
              - match: {{path: /stats/prometheus, headers: [{{name: ":method", string_match: {{exact: GET}}}}]}}
                route: {{cluster: envoy_admin}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {router}
"""


_STATS_CLUSTER = """\
  - name: envoy_admin
    type: STATIC  # Envoy's own admin on loopback, whatever the service cluster's type
    connect_timeout: 1s
    load_assignment:
      cluster_name: envoy_admin
      endpoints:
      - lb_endpoints:
        - endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {admin_port}}}}}}}
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


def error_table() -> str:
    """README.md's error table, from the catalogue (service/domain/errors.py): every `error.code`
    batchgate or its edge answers with. `python -m gateway.render --error-table` prints it."""
    rows = ["| HTTP | gRPC | `error.type` | `error.code` | when |", "|---|---|---|---|---|"]
    for entry in CATALOGUE:
        status = str(entry.status) if entry.status else "the provider's"
        grpc = grpc_code_for_http(entry.status).name if entry.status else "from the status"
        where = " (Envoy)" if entry.edge else ""
        rows.append(f"| {status} | {grpc} | `{entry.type}` | `{entry.code}` | {entry.when}{where} |")
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--error-table", action="store_true", help="print README.md's error table and exit")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--http-port", type=int, default=8080)
    upstream = parser.add_mutually_exclusive_group()
    upstream.add_argument("--grpc-port", type=int, action="append", default=[], help="a service port on 127.0.0.1")
    upstream.add_argument(
        "--upstream-dns", metavar="HOST:PORT", help="balance over every address HOST resolves to (STRICT_DNS)"
    )
    parser.add_argument("--admin-port", type=int, default=9901)
    parser.add_argument("--bind-host", default="127.0.0.1")
    parser.add_argument("--stats-port", type=int, help="serve Envoy's /stats/prometheus on this port of --bind-host")
    parser.add_argument(
        "--assets-dir", type=Path, help="where Envoy will find batchgate.pb and openapi.json (default: this checkout)"
    )
    args = parser.parse_args()
    if args.error_table:
        print(error_table(), end="")
        return
    if args.out is None:
        parser.error("--out is required")
    assets = {}
    if args.assets_dir:
        assets = {"descriptor": args.assets_dir / DESCRIPTOR.name, "openapi": args.assets_dir / OPENAPI.name}
    try:
        config = render(
            http_port=args.http_port,
            grpc_ports=args.grpc_port or [50051],
            upstream_dns=args.upstream_dns,
            admin_port=args.admin_port,
            bind_host=args.bind_host,
            stats_port=args.stats_port,
            **assets,
        )
    except ValueError as exc:
        parser.error(f"--upstream-dns: {exc}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(config)


@dataclass(frozen=True)
class LocalReply:
    """One kind of reply Envoy makes itself, as the Bifrost error fields (its type from the catalogue,
    service/domain/errors.py); the drop-in SDK routes word it in their own API's terms
    (`ErrorShape.local_words` in service.edge.surfaces). Messages are Envoy format strings."""

    status: int | None  # None: any status without a row of its own
    code: str
    message: str

    @property
    def type(self) -> str:
        return CODES[self.code].type


_NO_ROUTE = "no route for %REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"
# Envoy's own text names the status ("Not Implemented", "Bad Request", the transcoder's complaint,
# which gateway/errors.lua rewrites) and the details say why ("http1.invalid_transfer_encoding").
_ENVOY_SAYS = "%LOCAL_REPLY_BODY% (%RESPONSE_CODE_DETAILS%)"
# First match wins. 5xx replies never pass on Envoy's text: it names upstream addresses.
LOCAL_REPLIES = [
    LocalReply(404, "route_not_found", _NO_ROUTE),
    LocalReply(405, "method_not_allowed", "%REQ(:METHOD)% is not allowed on %REQ(:PATH)%; use %RESP(ALLOW)%"),
    LocalReply(408, "request_timeout", "the request did not arrive in time"),
    LocalReply(413, "request_too_large", "request body is too large"),
    LocalReply(500, "internal_error", "the gateway could not produce an answer"),
    LocalReply(501, "not_implemented", _ENVOY_SAYS),
    LocalReply(502, "upstream_unavailable", "batchgate service gave no valid answer"),
    LocalReply(503, "upstream_unavailable", "batchgate service is unavailable"),
    LocalReply(504, "upstream_timeout", "batchgate service did not answer in time"),
    LocalReply(None, "invalid_request", _ENVOY_SAYS),
]
# The drop-in routes with an error envelope of their own; the others answer in the Bifrost body.
SHAPED_SURFACES = tuple(surface for surface in SURFACES.values() if surface.shape is not None)
# Native gRPC callers of these local replies get this gRPC status (Envoy's own mapping says INTERNAL
# for 400 and UNKNOWN for the others): INVALID_ARGUMENT for a request refused as malformed,
# DEADLINE_EXCEEDED for one that did not arrive in time, RESOURCE_EXHAUSTED for one too large.
GRPC_LOCAL_REPLY_STATUS = {400: 3, 408: 4, 413: 8}


def local_reply_body(surface: Surface | None, reply: LocalReply) -> tuple[dict, dict[str, str]]:
    """(json_format body, extra headers) of one local reply on a surface (None: Bifrost routes).
    `%RESPONSE_CODE%` prints as a number."""
    if surface is not None and surface.shape is not None:
        shape = surface.shape
        return shape.body(shape.local_words[reply.status], reply.message, "%RESPONSE_CODE%")
    text = envelope.ErrorText(reply.type, reply.code, reply.message, None)
    # request_type: set by errors.lua on cancel routes only (absent elsewhere: null).
    request_type = f"%REQ({envelope.REQUEST_TYPE_HEADER})%"
    return envelope.bifrost(text, "%RESPONSE_CODE%", provider="", request_type=request_type), {}


def _status_filter(status: int) -> dict:
    value = {"default_value": status, "runtime_key": f"lr_{status}"}
    return {"status_code_filter": {"comparison": {"op": "EQ", "value": value}}}


def _local_reply_mappers() -> str:
    # Native gRPC callers get Envoy's plain message in grpc-message, not a JSON document. (A
    # transcoded REST request also looks like gRPC by now, but carries the original path.)
    grpc_call = {
        "and_filter": {
            "filters": [
                {
                    "header_filter": {
                        "header": {
                            "name": "content-type",
                            "string_match": {"safe_regex": {"regex": r"^application/grpc(\+.*)?$"}},
                        }
                    }
                },
                {
                    "header_filter": {
                        "header": {"name": "x-envoy-original-path", "present_match": True, "invert_match": True}
                    }
                },
            ]
        }
    }
    plain_text = {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"}}
    # Envoy's one 200 of its own is GET /openapi.json (a direct response): its body as it is.
    as_is = {"text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"}, "content_type": "application/json"}
    mappers = []
    for status, grpc_status in GRPC_LOCAL_REPLY_STATUS.items():
        # Envoy would say UNKNOWN: the gRPC code that names what happened, with our message.
        reply = next((reply for reply in LOCAL_REPLIES if reply.status == status), None)
        message = reply.message if reply is not None else "%LOCAL_REPLY_BODY%"
        mappers.append(
            {
                "filter": {"and_filter": {"filters": [grpc_call, _status_filter(status)]}},
                "body_format_override": {"text_format_source": {"inline_string": message}},
                "headers_to_add": [
                    {
                        "header": {"key": "grpc-status", "value": str(grpc_status)},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
            }
        )
    mappers += [
        {"filter": grpc_call, "body_format_override": plain_text},
        {"filter": _status_filter(200), "body_format_override": as_is},
    ]
    for surface in (*SHAPED_SURFACES, None):
        # Before transcoding the path is the REST one; after, Envoy keeps it in x-envoy-original-path.
        on_surface = (
            {
                "or_filter": {
                    "filters": [
                        {"header_filter": {"header": {"name": name, "string_match": {"prefix": f"/{surface.name}/"}}}}
                        for name in (":path", "x-envoy-original-path")
                    ]
                }
            }
            if surface
            else None
        )
        for reply in LOCAL_REPLIES:
            if surface is None and reply.status is None:
                continue  # the default body_format
            filters = [f for f in (on_surface, reply.status and _status_filter(reply.status)) if f]
            body, headers = local_reply_body(surface, reply)
            mapper = {
                "filter": {"and_filter": {"filters": filters}} if len(filters) > 1 else filters[0],
                "body_format_override": {"json_format": body},
            }
            if headers:
                mapper["headers_to_add"] = [
                    {"header": {"key": k, "value": v}, "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}
                    for k, v in headers.items()
                ]
            mappers.append(mapper)
    return "\n".join("            - " + json.dumps(m) for m in mappers)


def _default_local_reply() -> str:
    return json.dumps(local_reply_body(None, LOCAL_REPLIES[-1])[0])


if __name__ == "__main__":
    main()
