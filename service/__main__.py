"""`python -m service --config config.json --address 127.0.0.1:50051` runs the gRPC service.

The process's settings are read from the environment here, once (service.config.settings); the
flags, which the launcher (gateway/stack.py) passes to each worker, take precedence over them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import signal
import sqlite3
import sys
from pathlib import Path
from typing import NoReturn

from service.config.file import Config, read_config
from service.config.reader import ConfigError
from service.config.settings import Settings
from service.edge.server import Listener, serve
from service.infra import state
from service.infra.limits import EmbeddedStore, RateLimiter
from service.infra.observability import configure_logging, configure_tracing
from service.infra.providers.catalog import parse_config_bytes
from service.runtime.build import RuntimeFactory
from service.runtime.live import ConfigSource, LiveConfig, RunDir
from service.usecases.auth import exposure_problem


def _file_digest(path: str | None) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest() if path else None
    except OSError:
        return None


def _exit(message: str) -> NoReturn:
    print(f"batchgate: {message}", file=sys.stderr)
    raise SystemExit(2)


def _arguments(settings: Settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m service", description="batchgate gRPC service")
    parser.add_argument("--config", default=settings.config, required=not settings.config)
    parser.add_argument("--address", default=f"127.0.0.1:{settings.grpc_port}")
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
        default=settings.metrics_port,
        help="serve Prometheus /metrics on this port of METRICS_HOST (METRICS_PORT; 0: off)",
    )
    parser.add_argument("--tls-cert", default=settings.tls_cert_file, help="PEM certificate chain")
    parser.add_argument("--tls-key", default=settings.tls_key_file, help="PEM private key")
    parser.add_argument(
        "--edge-host", help="address the REST edge in front of this worker listens on (a reload must not open it)"
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(settings.state_dir),
        help=f"directory of the state that must outlive a restart: the embedded rate-limit store's "
        f"{state.RATE_LIMITS_FILE}, the operations' {state.OPERATIONS_FILE} (STATE_DIR; default: "
        f"{settings.state_dir} in the working directory)",
    )
    parser.add_argument(
        "--run-dir", help="directory of one gateway run, where its workers publish the config version each runs"
    )
    parser.add_argument("--worker", type=int, default=0, help="this worker's number (for /health)")
    parser.add_argument(
        "--rate-limit-db",
        default=settings.batchgate_rate_limit_db,
        help="the embedded rate-limit store's SQLite file, shared by the workers of one machine "
        f"(BATCHGATE_RATE_LIMIT_DB; default: {state.RATE_LIMITS_FILE} in the state directory)",
    )
    parser.add_argument(
        "--operations-db",
        default=settings.batchgate_operations_db,
        help="the SQLite file of long-running operations, shared by the workers of one machine "
        f"(BATCHGATE_OPERATIONS_DB; default: {state.OPERATIONS_FILE} in the state directory); unused when "
        "governance.store is Redis",
    )
    parser.add_argument(
        "--unbounded-for-benchmark",
        action="store_true",
        help="no per-caller limits (client.limits): only to measure what they cost (bench/bounds_cost.py)",
    )
    return parser.parse_args()


def _tls(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    if not (args.tls_cert or args.tls_key):
        return None
    try:
        return Path(args.tls_key).read_bytes(), Path(args.tls_cert).read_bytes()
    except (OSError, TypeError) as exc:
        _exit(f"cannot read the TLS key and certificate: {exc}")


def _source(args: argparse.Namespace) -> ConfigSource:
    """The config file, refused at a reload when it would open a public listener, and the TLS files
    a reload cannot change."""
    hosts = [args.address.rsplit(":", 1)[0], *([args.edge_host] if args.edge_host else [])]

    def exposure(config: Config) -> str | None:
        return next(filter(None, (exposure_problem(config, host) for host in hosts)), None)

    restart_only = {
        "TLS_CERT_FILE": lambda: _file_digest(args.tls_cert),
        "TLS_KEY_FILE": lambda: _file_digest(args.tls_key),
    }
    return ConfigSource(args.config, check=exposure, restart_only=restart_only)


def main() -> None:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        _exit(str(exc))
    args = _arguments(settings)
    try:
        state_dir = state.prepare(args.state_dir)
    except OSError as exc:
        _exit(f"cannot create the state directory {args.state_dir}: {exc.strerror}")
    operations_db: str = args.operations_db or str(state_dir / state.OPERATIONS_FILE)
    settings = dataclasses.replace(
        settings, metrics_port=args.metrics_port or 0, state_dir=str(state_dir), batchgate_operations_db=operations_db
    )
    # A SIGHUP (reload) that arrives before the server is up must not end the process.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    configure_logging(settings)
    configure_tracing(settings)
    try:
        raw = read_config(args.config)
        config = parse_config_bytes(raw, args.config)
    except ConfigError as exc:
        for line in exc.problems[:-1]:  # every one, each on its line (all unset variables at once)
            print(f"batchgate: config error: {line}", file=sys.stderr)
        _exit(f"config error: {exc.problems[-1] if exc.problems else exc}")
    problem = exposure_problem(config, args.address.rsplit(":", 1)[0])
    if problem:
        _exit(problem)
    tls = _tls(args)
    try:
        # One limiter per process, outside every loaded config: counts carry over reloads.
        limiter = RateLimiter.for_config(config.store, args.rate_limit_db or EmbeddedStore.path_in(state_dir))
    except (OSError, ValueError, sqlite3.Error) as exc:  # never the URL: redis-py's messages name the field
        _exit(f"cannot open the rate limit store: {exc}")
    run_dir = RunDir(args.run_dir, args.worker) if args.run_dir else None
    live = LiveConfig(config, raw, source=_source(args), factory=RuntimeFactory(limiter), run_dir=run_dir)
    extra = [f"127.0.0.1:{args.private_port}"] if args.private_port else []
    extra += [f"unix:{args.private_socket}"] if args.private_socket else []
    listener = Listener(args.address, tuple(extra), args.reuse_port, tls)
    asyncio.run(serve(live, listener, settings, fair_share=not args.unbounded_for_benchmark))


if __name__ == "__main__":
    main()
