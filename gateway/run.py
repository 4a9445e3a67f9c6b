"""`python -m gateway.run` (what `make run` does): runs Envoy + the service in the foreground.

Its settings come from the environment, read once here (service.config.settings, README's table):
CONFIG (without it, sandbox mode with bundled provider simulators), the ports, BIND_HOST, the TLS
files, WORKERS, ENVOY_CONCURRENCY, METRICS_PORT, SANDBOX_CANCEL_DELAY_S, STATE_DIR (state that must
outlive a restart: the embedded rate-limit store, the operations without a Redis store); the service
workers read theirs (LOG_*, DRAIN_DELAY_SECONDS, REQUEST_READ_TIMEOUT_SECONDS, OTEL_*) from the same
environment. CONFIG is watched as given (a symlink is followed at every look, never resolved once).
In sandbox mode every simulated provider starts with a demo mix of batches to list and cancel.
SIGINT/SIGTERM stop everything it started; SIGHUP makes every service worker reload the config
file (they also notice a change of the file by themselves).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from gateway.stack import Stack
from sandbox.server import SANDBOX_OPERATOR_KEY
from service.config.reader import ConfigError
from service.config.settings import Settings


def _path(value: str | None) -> Path | None:
    """An absolute path as given: symlinks are kept, so the workers watch the path itself and follow a
    swap of its target (a Kubernetes `config.json -> ..data/config.json`, a release symlink)."""
    return Path(os.path.abspath(value)) if value else None


def main() -> int:
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        print(f"batchgate: {exc}", file=sys.stderr)
        return 2
    config = settings.config
    stack = Stack(
        config=_path(config),
        http_port=settings.http_port,
        grpc_port=settings.grpc_port,
        admin_port=settings.admin_port,
        bind_host=settings.bind_host,
        workers=settings.workers,
        metrics_port=settings.metrics_port or None,
        envoy_concurrency=settings.envoy_concurrency,
        tls_cert=_path(settings.tls_cert_file),
        tls_key=_path(settings.tls_key_file),
        sandbox_cancel_delay_s=settings.sandbox_cancel_delay_s,
        sandbox_demo=True,
        # Never a temporary directory: rate-limit counts and operations must survive a restart.
        state_dir=_path(settings.state_dir),
    )
    if bool(stack.tls_cert) != bool(stack.tls_key):
        print("batchgate: set both TLS_CERT_FILE and TLS_KEY_FILE, or neither", file=sys.stderr)
        return 2
    stopping = reloading = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    def on_hangup(signum: int, frame: object) -> None:
        nonlocal reloading
        reloading = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    try:
        stack.start()
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"batchgate: config error: {problem}", file=sys.stderr)
        return 2
    except (RuntimeError, TimeoutError) as exc:
        print(f"batchgate: {exc}", file=sys.stderr)
        return 1
    mode = "sandbox mode (simulated providers, no accounts needed)" if config is None else f"config {config}"
    print(f"batchgate is up in {mode}", flush=True)
    url = stack.http_url
    print(f"  REST + gRPC edge: {url}   gRPC service: 127.0.0.1:{stack.grpc_port}", flush=True)
    insecure = "-k " if stack.tls_cert else ""
    if stack.metrics_port:
        last = stack.metrics_port + stack.workers - 1
        print(
            f"  metrics: http://127.0.0.1:{stack.metrics_port}/metrics (workers: ports {stack.metrics_port}-{last}),"
            f" Envoy: http://127.0.0.1:{stack.admin_port}/stats/prometheus, health: {url}/health",
            flush=True,
        )
    print(f"  state kept in: {stack.state_dir}", flush=True)
    print(f"  rate limits counted in: {stack.rate_limit_store}", flush=True)
    print(f"  operations kept in: {stack.operation_store}", flush=True)
    print(f"  try: curl {insecure}-X POST '{url}/v1/batches/batch_demo/cancel?provider=openai'", flush=True)
    if config is None:
        print(
            f"  kill switch (dry run): curl {insecure}-X POST '{url}/v1/batches:cancelMatching' "
            f"-H 'x-bf-vk: {SANDBOX_OPERATOR_KEY}' -d '{{\"validate_only\": true}}'",
            flush=True,
        )
    print(f"  reload the config: kill -HUP {os.getpid()} (or change {stack.config_path})", flush=True)
    code = 0
    while not stopping:
        if any(proc.poll() is not None for proc in stack.procs):
            print("batchgate: a component exited; stopping", file=sys.stderr)
            code = 1
            break
        if reloading:
            reloading = False
            print(
                "batchgate: SIGHUP: the service workers reload the config; HTTP_PORT, GRPC_PORT, ADMIN_PORT, "
                "METRICS_PORT, BIND_HOST, WORKERS, ENVOY_CONCURRENCY and the TLS files keep their values until a "
                "restart",
                flush=True,
            )
            stack.reload()
        time.sleep(0.05)
    stack.stop()
    return code


if __name__ == "__main__":
    sys.exit(main())
