"""The system under test, all on loopback: one provider simulator (`python -m sandbox --port 0
--auto-create`) with batch `bench1` seeded with a huge cancel delay (so every cancel answers 200
`cancelling`, never 409), and the gateway via `gateway.stack.Stack` (service + Envoy) configured
against that same simulator process. Optionally the reference servicer (bench/floor.py) and a second
gateway whose rate-limit store is a local redis-server started here with a password.

gateway.stack, sandbox and service are imported inside the methods: `bench.run` makes sure the
generated gRPC code exists (`make proto`) before anything imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import BATCH_ID, ROOT, HarnessError, log
from bench.procs import Groups, die_with_parent, envoy_pids, service_pids

if TYPE_CHECKING:
    from bench.load import Target

VK_OPEN = "sk-bf-bench-open-0000000000"
VK_LIMITED = "sk-bf-bench-limited-00000000"


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _spawn_on_port(module: str, announce: str, *args: str) -> tuple[subprocess.Popen, int]:
    """`python -m module --port 0 ...`, which prints `ANNOUNCE=<port>` once it listens."""
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        preexec_fn=die_with_parent,
    )
    line = proc.stdout.readline().decode().strip()
    if not line.startswith(f"{announce}="):
        raise HarnessError(f"{module} did not start: {line!r}")
    return proc, int(line.split("=", 1)[1])


class System:
    """The simulator process plus the gateway Stack pointed at it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sim: subprocess.Popen | None = None
        self.floor: subprocess.Popen | None = None
        self.floor_port = 0
        self.floor_upstream: subprocess.Popen | None = None
        self.floor_upstream_port = 0
        # An Envoy edge (the gateway's own config) in front of each reference servicer: name -> (process, URL).
        self.floor_edges: dict[str, tuple[subprocess.Popen, str]] = {}
        self.stack = None
        self.sim_url = ""
        self.redis: subprocess.Popen | None = None
        self.redis_stack = None
        self.redis_url = ""
        # The same gateway without the bounds of issue 21, and a second one with them (its A/A
        # pair across gateway processes): bench/bounds_cost.py.
        self.unbounded_stack = None
        self.twin_stack = None

    def start_floor(self) -> None:
        """The reference grpc.aio servicers (bench/floor.py): without upstream, and with one aiohttp
        call to the simulator (after `start`)."""
        from sandbox.openai import OpenAISim

        # Each also on a Unix socket, the hop the gateway's Envoy takes to its workers.
        sockets = {name: str(self.workdir / f"{name}.sock") for name in ("rest_floor", "rest_floor_upstream")}
        self.floor, self.floor_port = _spawn_on_port("bench.floor", "FLOOR_PORT", "--socket", sockets["rest_floor"])
        url = f"{self.sim_url}/openai/v1/batches/{BATCH_ID}/cancel"
        self.floor_upstream, self.floor_upstream_port = _spawn_on_port(
            "bench.floor",
            "FLOOR_PORT",
            "--upstream",
            url,
            "--key",
            OpenAISim.default_key,
            "--socket",
            sockets["rest_floor_upstream"],
        )
        for name, socket in sockets.items():
            self.floor_edges[name] = self._edge(name, socket)

    def _edge(self, name: str, socket: str) -> tuple[subprocess.Popen, str]:
        """Envoy with the gateway's config (gateway/render.py: Lua, transcoder, router) in front of
        one reference servicer's Unix socket, as the gateway runs it (`--concurrency` ENVOY_CONCURRENCY)."""
        from gateway.render import render
        from gateway.stack import envoy_binary, free_port
        from service.config.settings import Settings

        http_port = free_port()
        config = self.workdir / f"envoy-{name}.yaml"
        config.write_text(render(http_port=http_port, grpc_sockets=[socket], admin_port=free_port()))
        binary = envoy_binary()
        args = [
            binary,
            "-c",
            str(config),
            "--concurrency",
            str(Settings.from_env().envoy_concurrency),
            "--log-level",
            "warn",
        ]
        log_file = open(self.workdir / f"envoy-{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(
            [*args, "--base-id", str(http_port)],
            cwd=ROOT,
            stdout=log_file,
            stderr=log_file,
            preexec_fn=die_with_parent,
        )
        return proc, f"http://127.0.0.1:{http_port}"

    def start(self) -> None:
        from gateway.stack import Stack, free_port
        from sandbox.server import gateway_config
        from service.config.settings import Settings

        self.sim, port = _spawn_on_port("sandbox", "SANDBOX_PORT", "--auto-create")
        self.sim_url = f"http://127.0.0.1:{port}"
        status, body = http(
            "POST",
            f"{self.sim_url}/_sim/openai/batches",
            json.dumps({"id": BATCH_ID, "cancel_delay_s": 1e9}).encode(),
            {"content-type": "application/json"},
        )
        if status != 201:
            raise HarnessError(f"seeding {BATCH_ID} failed: {status} {body[:200]!r}")
        config = self.workdir / "config.json"
        config.write_text(json.dumps(bench_config(gateway_config(self.sim_url)), indent=2))
        self.stack = Stack(
            config=config,
            http_port=free_port(),
            grpc_port=free_port(),
            admin_port=free_port(),
            log_dir=self.workdir / "logs",
            workers=Settings.from_env().workers,
            envoy_concurrency=Settings.from_env().envoy_concurrency,
        )
        self.stack.start(timeout=30)

    def start_unbounded_gateway(self) -> None:
        """Two more gateways (same simulator, same config): one started without the bounds of issue
        21, one with them (so that two gateway processes with the same code give the noise floor)."""
        from gateway.stack import Stack, free_port
        from service.config.settings import Settings

        settings = Settings.from_env()
        for name, unbounded in (("unbounded", True), ("twin", False)):
            stack = Stack(
                config=self.workdir / "config.json",
                http_port=free_port(),
                grpc_port=free_port(),
                admin_port=free_port(),
                log_dir=self.workdir / f"logs-{name}",
                workers=settings.workers,
                envoy_concurrency=settings.envoy_concurrency,
                unbounded=unbounded,
            )
            stack.start(timeout=30)
            setattr(self, f"{name}_stack", stack)

    def start_redis_gateway(self) -> None:
        """A local redis-server and a second gateway (same simulator) counting limits in it."""
        from gateway.stack import Stack, free_port
        from sandbox.server import gateway_config
        from service.config.settings import Settings

        binary = shutil.which("redis-server")
        if binary is None:
            log("redis-server not installed (make bench installs it): no Redis row")
            return
        port, password = free_port(), os.urandom(12).hex()
        (self.workdir / "redis").mkdir()
        self.redis = subprocess.Popen(
            [
                binary,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.workdir / "redis"),
                "--save",
                "",
                "--appendonly",
                "no",
                "--requirepass",
                password,
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        self.redis_url = f"redis://:{password}@127.0.0.1:{port}/0"
        config = self.workdir / "config-redis.json"
        store = {"type": "redis", "url": "env.BENCH_REDIS_URL"}
        config.write_text(json.dumps(bench_config(gateway_config(self.sim_url), store), indent=2))
        self.redis_stack = Stack(
            config=config,
            http_port=free_port(),
            grpc_port=free_port(),
            admin_port=free_port(),
            log_dir=self.workdir / "logs-redis",
            workers=Settings.from_env().workers,
            envoy_concurrency=Settings.from_env().envoy_concurrency,
            env={"BENCH_REDIS_URL": self.redis_url},
        )
        self.redis_stack.start(timeout=30)

    def stop(self) -> None:
        for stack in (self.stack, self.redis_stack, self.unbounded_stack, self.twin_stack):
            if stack is not None:
                stack.stop()
        edges = [proc for proc, _ in self.floor_edges.values()]
        for proc in (*edges, self.floor, self.floor_upstream, self.redis, self.sim):
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout:
                proc.stdout.close()

    @property
    def envoy_url(self) -> str:
        return self.stack.http_url

    @property
    def grpc_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.grpc_port}"

    def groups(self) -> Groups:
        service, envoy = service_pids(self.stack), envoy_pids(self.stack)
        if not service or not envoy:
            raise HarnessError(f"cannot find service/envoy among {[p.args for p in self.stack.procs]}")
        return Groups({"service": service, "envoy": envoy, "sim": [self.sim.pid]})

    def groups_for(self, target: Target) -> Groups:
        """What to read CPU from while `target` runs: for the floor path its process is "service";
        for the Redis row, the second gateway's processes."""
        groups = self.groups()
        if target.name == "grpc_floor":
            groups.roots["service"] = [self.floor.pid]
        if target.name == "grpc_floor_upstream":
            groups.roots["service"] = [self.floor_upstream.pid]
        if target.name in self.floor_edges:
            groups.roots["service"] = [self.floor.pid if target.name == "rest_floor" else self.floor_upstream.pid]
            groups.roots["envoy"] = [self.floor_edges[target.name][0].pid]
        for suffix, stack in (("_unbounded", self.unbounded_stack), ("_twin", self.twin_stack)):
            if target.name.endswith(suffix):
                groups.roots["service"] = service_pids(stack)
                groups.roots["envoy"] = envoy_pids(stack)
        if target.name in ("rest_vk_redis", "rest_vk_open_redis"):
            groups.roots["service"] = service_pids(self.redis_stack)
            groups.roots["envoy"] = envoy_pids(self.redis_stack)
        return groups

    def logs_tail(self) -> str:
        out = []
        for path in sorted((self.workdir / "logs").glob("*.log")):
            out.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-15:]))
        return "\n".join(out)


def bench_config(config: dict, store: dict | None = None) -> dict:
    """The sandbox config plus two virtual keys: one without a limit, one with a limit no run reaches."""
    config["governance"] = {
        "rate_limits": [{"id": "never-reached", "request_max_limit": 1_000_000_000, "request_reset_duration": "1h"}],
        "virtual_keys": [
            {"id": "bench-open", "value": VK_OPEN, "provider_configs": [{"provider": "openai"}]},
            {
                "id": "bench-limited",
                "value": VK_LIMITED,
                "rate_limit_id": "never-reached",
                "provider_configs": [{"provider": "openai"}],
            },
        ],
        **({"store": store} if store else {}),
    }
    return config


def sandbox_stack(log_dir: Path, **options: object):
    """A gateway in sandbox mode (its own simulators serve every provider) on free loopback ports,
    started; `options` are further `gateway.stack.Stack` fields. What bench.soak and bench.bulk run."""
    from gateway.stack import Stack, free_port

    return Stack(
        config=None, http_port=free_port(), grpc_port=free_port(), admin_port=free_port(), log_dir=log_dir, **options
    ).start()
