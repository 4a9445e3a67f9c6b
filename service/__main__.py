"""`python -m service --config config.json --address 127.0.0.1:50051` runs the gRPC service."""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import signal
import sqlite3
import sys
from pathlib import Path

from service.config.file import Config, read_config
from service.config.reader import ConfigError
from service.edge.server import serve
from service.infra import state
from service.infra.limits import EMBEDDED_PATH_ENV, EmbeddedStore, RateLimiter
from service.infra.observability import configure_logging, configure_tracing
from service.infra.providers.catalog import parse_config_bytes
from service.runtime.live import LiveConfig, RunDir
from service.usecases.auth import exposure_problem

OPERATIONS_DB_ENV = "BATCHGATE_OPERATIONS_DB"


def _file_digest(path: str | None) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description="batchgate gRPC service")
    parser.add_argument("--config", default=os.environ.get("CONFIG"), required=not os.environ.get("CONFIG"))
    parser.add_argument("--address", default=f"127.0.0.1:{os.environ.get('GRPC_PORT', '50051')}")
    parser.add_argument("--reuse-port", action="store_true", help="share the port with other workers")
    parser.add_argument(
        "--private-port", type=int, help="also listen on this loopback port of this worker's own (Envoy's endpoint)"
    )
    parser.add_argument(
        "--private-socket",
        help="also listen on this Unix socket of this worker's own (Envoy's endpoint on one machine)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(os.environ.get("METRICS_PORT") or 0) or None,
        help="serve Prometheus /metrics on this loopback port (METRICS_PORT)",
    )
    parser.add_argument("--tls-cert", default=os.environ.get("TLS_CERT_FILE"), help="PEM certificate chain")
    parser.add_argument("--tls-key", default=os.environ.get("TLS_KEY_FILE"), help="PEM private key")
    parser.add_argument(
        "--edge-host", help="address the REST edge in front of this worker listens on (a reload must not open it)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=state.state_dir_from(os.environ, state.DEFAULT_STATE_DIR),
        help=f"directory of the state that must outlive a restart: the embedded rate-limit store's "
        f"{state.RATE_LIMITS_FILE}, the operations' {state.OPERATIONS_FILE} ({state.STATE_DIR_ENV}; "
        f"default: {state.DEFAULT_STATE_DIR} in the working directory)",
    )
    parser.add_argument(
        "--run-dir", help="directory of one gateway run, where its workers publish the config version each runs"
    )
    parser.add_argument("--worker", type=int, default=0, help="this worker's number (for /health)")
    parser.add_argument(
        "--rate-limit-db",
        default=os.environ.get(EMBEDDED_PATH_ENV),
        help="the embedded rate-limit store's SQLite file, shared by the workers of one machine "
        f"({EMBEDDED_PATH_ENV}; default: {state.RATE_LIMITS_FILE} in the state directory)",
    )
    parser.add_argument(
        "--operations-db",
        default=os.environ.get(OPERATIONS_DB_ENV),
        help="the SQLite file of long-running operations, shared by the workers of one machine "
        f"({OPERATIONS_DB_ENV}; default: {state.OPERATIONS_FILE} in the state directory); "
        "unused when governance.store is Redis",
    )
    args = parser.parse_args()
    # A SIGHUP (reload) that arrives before the server is up must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging()
    configure_tracing()
    hosts = [args.address.rsplit(":", 1)[0], *([args.edge_host] if args.edge_host else [])]

    def exposure(config: Config) -> str | None:
        return next(filter(None, (exposure_problem(config, host) for host in hosts)), None)

    try:
        raw = read_config(args.config)
        config = parse_config_bytes(raw, args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"batchgate: config error: {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    problem = exposure_problem(config, hosts[0])
    if problem:
        print(f"batchgate: {problem}", file=sys.stderr)
        raise SystemExit(2)
    tls = None
    if args.tls_cert or args.tls_key:
        try:
            tls = (Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes())
        except (OSError, TypeError) as exc:
            print(f"batchgate: cannot read the TLS key and certificate: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
    try:
        state_dir = state.prepare(args.state_dir)
    except OSError as exc:
        print(f"batchgate: cannot create the state directory {args.state_dir}: {exc.strerror}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        embedded = args.rate_limit_db or EmbeddedStore.path_in(state_dir)
        # One limiter per process, outside every loaded config: counts carry over reloads.
        limiter = RateLimiter.for_config(config.store, embedded)
    except (OSError, ValueError, sqlite3.Error) as exc:  # never the URL: redis-py's messages name the field
        print(f"batchgate: cannot open the rate limit store: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    live = LiveConfig(
        config,
        raw,
        path=args.config,
        limiter=limiter,
        check=exposure,
        restart_only={
            "TLS_CERT_FILE": lambda: _file_digest(args.tls_cert),
            "TLS_KEY_FILE": lambda: _file_digest(args.tls_key),
        },
        run_dir=RunDir(args.run_dir, args.worker) if args.run_dir else None,
    )
    extra = [f"127.0.0.1:{args.private_port}"] if args.private_port else []
    extra += [f"unix:{args.private_socket}"] if args.private_socket else []
    asyncio.run(
        serve(
            live,
            args.address,
            *extra,
            reuse_port=args.reuse_port,
            tls=tls,
            metrics_port=args.metrics_port,
            operations_db=args.operations_db or str(state_dir / state.OPERATIONS_FILE),
        )
    )


if __name__ == "__main__":
    main()
