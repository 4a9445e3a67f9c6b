"""batchgate benchmark: gateway overhead over a direct provider call, side by side, in one run.

    python -m bench.run                      # full run (< 3 min on 2 cores): bench/results/results.md + latency.png
    python -m bench.run --smoke              # ~10 s: c=1 and c=8, a few hundred requests per path -> smoke.md
    python -m bench.run --rss-soak 200000    # RSS flatness only: REST via Envoy at c=64, RSS every 10k -> soak.md
    python -m bench.run --profile            # full run, then py-spy on the service under REST c=64 -> profile.md

Options: --c1-requests N (2000), --c64-requests N (20000), --concurrency C (64), --grpc-conns K (8:
the c concurrent gRPC calls go over K HTTP/2 connections, c/K streams each), --envoy-concurrency N
and --workers N (exported as ENVOY_CONCURRENCY / WORKERS to the stack), --client h2load|python,
--no-floor (skip the reference path below).

What runs, all on loopback: one provider simulator (`python -m sandbox --port 0 --auto-create`) with
batch `bench1` seeded with a huge cancel delay (so every cancel answers 200 `cancelling`, never 409),
and the gateway via `gateway.stack.Stack` (service + Envoy) configured against that same simulator
process. Four paths plus a reference, each measured at c=1 (latency) and c=64 (throughput), after
a warm-up:

    baseline     POST {sim}/openai/v1/batches/bench1/cancel      HTTP/1.1, straight to the simulator
    rest_envoy   POST {envoy}/v1/batches/bench1/cancel?provider=openai   HTTP/1.1, transcoded by Envoy
    grpc_direct  /batchgate.v1.BatchService/Cancel on the service port    h2c
    grpc_envoy   /batchgate.v1.BatchService/Cancel on Envoy's port        h2c, passed through
    grpc_floor   reference: bench/floor.py, a trivial grpc.aio servicer that answers a fixed batch
                 without any upstream call: the cost of grpc.aio itself (no overhead column)

and the cost of a virtual-key rate limit (issue 11), REST via Envoy with `x-bf-vk`:

    rest_vk_open      a virtual key without a limit (the store is never touched): the reference
    rest_vk_embedded  a limited key (a limit far too high to trigger), embedded SQLite store
    rest_vk_open_redis, rest_vk_redis
                      the same two on a second gateway whose store is a local redis-server (started
                      by the harness with a password; skipped when redis-server is not installed)

The limit check's cost is rest_vk_embedded minus rest_vk_open, and rest_vk_redis minus
rest_vk_open_redis (each against the same gateway), at the same percentile.
Because one sequential run per path cannot resolve a fraction of a millisecond on a shared machine
whose background load drifts, the verdict comes from interleaved rounds at c=1 (open, open again,
embedded, Redis, N requests each per round, in an order that rotates; the median over rounds of each
round's p50 difference, with the open-against-open difference as the noise floor), next to the check
alone timed in-process (RateLimiter.check against each store, p50/p99).

Load generator: h2load (Debian nghttp2-client; installed with apt-get when missing and running as
root), one client thread. It speaks HTTP/1.1 and h2c, bounds runs by request count and logs every
request's latency (--log-file), and costs 20-60 us of CPU per request (reported: a tenth of what
the service costs; the simulator called through it reaches >10k req/s), so it is not the bottleneck.
gRPC calls are a prebuilt length-prefixed protobuf frame posted with `content-type: application/grpc`;
since gRPC errors arrive with HTTP 200, the gRPC runs use `-v` and count responses whose headers
carry `grpc-status` != 0 (trailers-only) or the service's `x-bf-status` error header; a self-test
sends known-bad requests on every path first and checks that each is counted.
Without h2load (or with --client python) a Python asyncio client is used instead (raw HTTP/1.1 and
grpc.aio): correct but much costlier per request, so its throughput numbers understate the gateway.

Reported per path and concurrency: requests, errors, req/s, p50/p90/p99 (client-side, every request),
overhead = path minus baseline at the same percentile and concurrency, and CPU per request of the
service, Envoy, simulator and load generator (utime+stime from /proc across the measured run). Service
RSS (VmRSS, summed over service processes) before the first and after the last request. Targets are
printed as PASS/MISS and never fail the run. Exit status: 0; 1 when a path returned errors in --smoke
(or in the soak); 2 when the harness itself could not run (sanity check failed, a tool is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bench.plot import percentile, write_png

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BATCH_ID = "bench1"
GRPC_METHOD = "/batchgate.v1.BatchService/Cancel"
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Targets of issue 7 (reported, never enforced).
TARGET_REST_C1_P50_MS = 0.8
TARGET_REST_C1_P99_MS = 3.0
TARGET_GRPC_C1_P50_MS = 0.5
TARGET_REST_C64_RPS = 2500
TARGET_REST_C64_P99_MS = 60.0
TARGET_RSS_GROWTH = 0.10
# Issue 11: what a rate-limit check may add over the same call by a key without a limit.
TARGET_LIMIT_C1_P50_MS = 0.3
VK_OPEN = "sk-bf-bench-open-0000000000"
VK_LIMITED = "sk-bf-bench-limited-00000000"


class HarnessError(RuntimeError):
    """The harness could not measure (as opposed to the gateway measuring badly)."""


# --------------------------------------------------------------------------------------------------
# Tools


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def ensure_h2load() -> str | None:
    """Path of h2load, installing Debian's nghttp2-client when missing and allowed."""
    found = shutil.which("h2load")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    log("h2load missing: apt-get install -y nghttp2-client")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "nghttp2-client"]
    try:  # bounded: a registry that does not answer must not hang the run (the Python client remains)
        if subprocess.run(install, env=env, capture_output=True, timeout=180).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=180)
            subprocess.run(install, env=env, capture_output=True, timeout=180)
    except subprocess.TimeoutExpired:
        log("apt-get did not finish in time; using the Python client")
    return shutil.which("h2load")


def ensure_pip_requirements(requirements: Path, module: str) -> bool:
    """Imports `module`, pip-installing `requirements` into this interpreter's environment first
    when it is missing. False when it still cannot be imported."""
    try:
        __import__(module)
        return True
    except ImportError:
        pass
    log(f"{module} missing: pip install -r {requirements.relative_to(ROOT)}")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "-r", str(requirements)],
            capture_output=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        log(f"installing {module} did not finish in time")
    try:
        __import__(module)
        return True
    except ImportError:
        return False


def ensure_generated_code() -> None:
    if not (ROOT / "service" / "gen" / "batchgate" / "v1" / "batchgate_pb2.py").exists() or not (
        ROOT / "build" / "batchgate.pb"
    ).exists():
        log("generated code missing: make proto")
        subprocess.run(["make", "-C", str(ROOT), "proto"], check=True, capture_output=True)


def tool_version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0].strip() if text else "unknown"


# --------------------------------------------------------------------------------------------------
# Processes: /proc readings


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def with_descendants(pids: list[int]) -> list[int]:
    children = _children_map()
    out, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLK_TCK


def rss_kib(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total


@dataclass
class Groups:
    """Root pids of what we measure; descendants are looked up at each reading (worker processes)."""

    roots: dict[str, list[int]]

    def pids(self, name: str) -> list[int]:
        return with_descendants(self.roots.get(name, []))

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(self.pids(name)) for name in self.roots}

    def rss(self, name: str) -> int:
        return rss_kib(self.pids(name))


# --------------------------------------------------------------------------------------------------
# The system under test


def _die_with_parent() -> None:
    import ctypes

    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


class System:
    """The simulator process plus the gateway Stack pointed at it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.sim: subprocess.Popen | None = None
        self.floor: subprocess.Popen | None = None
        self.floor_port = 0
        self.stack = None
        self.sim_url = ""
        self.redis: subprocess.Popen | None = None
        self.redis_stack = None
        self.redis_url = ""

    def start_floor(self) -> None:
        """The reference grpc.aio servicer without upstream (bench/floor.py)."""
        self.floor = subprocess.Popen(
            [sys.executable, "-m", "bench.floor", "--port", "0"], cwd=ROOT, stdout=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        line = self.floor.stdout.readline().decode().strip()
        if not line.startswith("FLOOR_PORT="):
            raise HarnessError(f"bench.floor did not start: {line!r}")
        self.floor_port = int(line.split("=", 1)[1])

    def start(self) -> None:
        from gateway.stack import Stack, default_envoy_concurrency, default_workers, free_port
        from sandbox.server import gateway_config

        self.sim = subprocess.Popen(
            [sys.executable, "-m", "sandbox", "--port", "0", "--auto-create"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            preexec_fn=_die_with_parent,
        )
        line = self.sim.stdout.readline().decode().strip()
        if not line.startswith("SANDBOX_PORT="):
            raise HarnessError(f"sandbox did not start: {line!r}")
        self.sim_url = f"http://127.0.0.1:{int(line.split('=', 1)[1])}"
        status, body = _http(
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
            workers=default_workers(),
            envoy_concurrency=default_envoy_concurrency(),
        )
        self.stack.start(timeout=30)

    def start_redis_gateway(self) -> None:
        """A local redis-server and a second gateway (same simulator) counting limits in it."""
        from gateway.stack import Stack, default_envoy_concurrency, default_workers, free_port
        from sandbox.server import gateway_config

        binary = shutil.which("redis-server")
        if binary is None:
            log("redis-server not installed (make bench installs it): no Redis row")
            return
        port, password = free_port(), os.urandom(12).hex()
        (self.workdir / "redis").mkdir()
        self.redis = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.workdir / "redis"), "--save", "",
             "--appendonly", "no", "--requirepass", password], cwd=ROOT, stdout=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        self.redis_url = f"redis://:{password}@127.0.0.1:{port}/0"
        config = self.workdir / "config-redis.json"
        store = {"type": "redis", "url": "env.BENCH_REDIS_URL"}
        config.write_text(json.dumps(bench_config(gateway_config(self.sim_url), store), indent=2))
        self.redis_stack = Stack(
            config=config, http_port=free_port(), grpc_port=free_port(), admin_port=free_port(),
            log_dir=self.workdir / "logs-redis", workers=default_workers(),
            envoy_concurrency=default_envoy_concurrency(),
            env={"BENCH_REDIS_URL": self.redis_url},
        )
        self.redis_stack.start(timeout=30)

    def stop(self) -> None:
        for stack in (self.stack, self.redis_stack):
            if stack is not None:
                stack.stop()
        for proc in (self.floor, self.redis, self.sim):
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
        service = [p.pid for p in self.stack.procs if _is_service(p.args)]
        envoy = [p.pid for p in self.stack.procs if "envoy" in Path(str(p.args[0])).name]
        if not service or not envoy:
            raise HarnessError(f"cannot find service/envoy among {[p.args for p in self.stack.procs]}")
        return Groups({"service": service, "envoy": envoy, "sim": [self.sim.pid]})

    def groups_for(self, target: Target) -> Groups:
        """What to read CPU from while `target` runs: for the floor path its process is "service";
        for the Redis row, the second gateway's processes."""
        groups = self.groups()
        if target.name == "grpc_floor":
            groups.roots["service"] = [self.floor.pid]
        if target.name in ("rest_vk_redis", "rest_vk_open_redis"):
            groups.roots["service"] = [p.pid for p in self.redis_stack.procs if _is_service(p.args)]
            groups.roots["envoy"] = [p.pid for p in self.redis_stack.procs if "envoy" in Path(str(p.args[0])).name]
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
            {"id": "bench-limited", "value": VK_LIMITED, "rate_limit_id": "never-reached",
             "provider_configs": [{"provider": "openai"}]},
        ],
        **({"store": store} if store else {}),
    }
    return config


def _is_service(args: object) -> bool:
    args = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
    return any(a == "-m" and b == "service" for a, b in zip(args, args[1:]))


# --------------------------------------------------------------------------------------------------
# Paths and load


@dataclass
class Target:
    """One path under test: how h2load (or the Python client) calls it."""

    name: str
    label: str
    url: str  # full URL, query included
    grpc: bool
    headers: dict[str, str]
    body: bytes


def grpc_frame(provider: str) -> bytes:
    from service.gen.batchgate.v1 import batchgate_pb2 as pb

    message = pb.CancelBatchRequest(batch_id=BATCH_ID, provider=provider).SerializeToString()
    return b"\x00" + struct.pack(">I", len(message)) + message


def targets(system: System, *, bad: bool = False) -> list[Target]:
    """The four paths; with `bad`, requests each path must answer with an error (detector self-test)."""
    from sandbox.openai import OpenAISim

    key = "sk-wrong-key-for-bench" if bad else OpenAISim.default_key
    provider = "nope" if bad else "openai"
    json_headers = {"content-type": "application/json"}
    grpc_headers = {"content-type": "application/grpc", "te": "trailers"}
    out = [
        Target("baseline", "baseline: simulator direct (HTTP/1.1)",
               f"{system.sim_url}/openai/v1/batches/{BATCH_ID}/cancel", False,
               {**json_headers, "authorization": f"Bearer {key}"}, b"{}"),
        Target("rest_envoy", "REST via Envoy (HTTP/1.1)",
               f"{system.envoy_url}/v1/batches/{BATCH_ID}/cancel?provider={provider}", False, json_headers, b"{}"),
        Target("rest_vk_open", "REST via Envoy, virtual key without a limit",
               f"{system.envoy_url}/v1/batches/{BATCH_ID}/cancel?provider={provider}", False,
               {**json_headers, "x-bf-vk": VK_OPEN}, b"{}"),
        Target("rest_vk_embedded", "REST via Envoy, limited virtual key, embedded store",
               f"{system.envoy_url}/v1/batches/{BATCH_ID}/cancel?provider={provider}", False,
               {**json_headers, "x-bf-vk": VK_LIMITED}, b"{}"),
        Target("grpc_direct", "gRPC direct to service (h2c)",
               f"{system.grpc_url}{GRPC_METHOD}", True, grpc_headers, grpc_frame(provider)),
        Target("grpc_envoy", "gRPC via Envoy (h2c)",
               f"{system.envoy_url}{GRPC_METHOD}", True, grpc_headers, grpc_frame(provider)),
    ]
    if system.redis_stack is not None:
        out.append(Target("rest_vk_open_redis", "REST via Envoy (Redis gateway), virtual key without a limit",
                          f"{system.redis_stack.http_url}/v1/batches/{BATCH_ID}/cancel?provider={provider}", False,
                          {**json_headers, "x-bf-vk": VK_OPEN}, b"{}"))
        out.append(Target("rest_vk_redis", "REST via Envoy (Redis gateway), limited virtual key, Redis store",
                          f"{system.redis_stack.http_url}/v1/batches/{BATCH_ID}/cancel?provider={provider}", False,
                          {**json_headers, "x-bf-vk": VK_LIMITED}, b"{}"))
    if system.floor_port and not bad:  # the floor answers everything with success
        out.append(Target("grpc_floor", "reference: trivial grpc.aio servicer, no upstream (h2c)",
                          f"http://127.0.0.1:{system.floor_port}{GRPC_METHOD}", True, grpc_headers,
                          grpc_frame(provider)))
    return out


@dataclass
class LoadResult:
    latencies_ms: list[float]  # ascending, one per answered request
    errors: int
    elapsed_s: float
    client_cpu_s: float


@dataclass
class Run:
    target: str
    c: int
    n: int
    result: LoadResult
    cpu_s: dict[str, float] = field(default_factory=dict)  # per process group, measured run only

    @property
    def rps(self) -> float:
        return self.n / self.result.elapsed_s if self.result.elapsed_s > 0 else math.nan

    def pct(self, p: float) -> float:
        return percentile(self.result.latencies_ms, p)

    def cpu_us_per_req(self, group: str) -> float:
        if group == "client":
            return self.result.client_cpu_s / self.n * 1e6
        return self.cpu_s.get(group, math.nan) / self.n * 1e6


class H2Load:
    name = "h2load"

    def __init__(self, binary: str, workdir: Path, grpc_conns: int) -> None:
        self.binary, self.workdir, self.grpc_conns = binary, workdir, grpc_conns
        self.version = tool_version([binary, "--version"])

    def run(self, target: Target, c: int, n: int) -> LoadResult:
        body = self.workdir / f"{target.name}-{abs(hash(target.body))}.body"
        body.write_bytes(target.body)
        log_file, out_file = self.workdir / "h2load.log", self.workdir / "h2load.out"
        log_file.unlink(missing_ok=True)
        if target.grpc:
            conns = min(c, self.grpc_conns)
            if c % conns:
                conns = c
            shape = ["-v", "-c", str(conns), "-m", str(c // conns)]
        else:
            shape = ["--h1", "-c", str(c), "-m", "1"]
        args = [self.binary, *shape, "-n", str(n), "-t", "1", f"--log-file={log_file}", "-d", str(body)]
        for name, value in target.headers.items():
            args += ["-H", f"{name}: {value}"]
        args.append(target.url)
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        with open(out_file, "wb") as out:
            try:
                subprocess.run(args, stdout=out, stderr=subprocess.STDOUT, timeout=max(60.0, n / 100))
            except subprocess.TimeoutExpired:
                raise HarnessError(f"h2load on {target.name} did not finish in time") from None
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        rows = []
        if log_file.exists():
            for line in log_file.read_text().splitlines():
                start, status, duration = line.split("\t")[:3]
                rows.append((int(start), int(status), int(duration)))
        output = out_file.read_text(errors="replace")
        if not rows and "requests:" not in output:
            raise HarnessError(f"h2load failed on {target.name}: {output[-500:]}")
        errors = (n - len(rows)) + sum(1 for _, status, _ in rows if not 200 <= status < 300)
        if target.grpc:
            errors += grpc_errors_in_verbose(output)
        latencies = sorted(duration / 1000 for _, status, duration in rows if status != -1)
        elapsed = (max(s + d for s, _, d in rows) - min(s for s, _, _ in rows)) / 1e6 if rows else math.nan
        return LoadResult(latencies, min(errors, n), elapsed, client_cpu)


_STATUS_LINE = re.compile(r"^\[stream_id=\d+\] :status: ")
_GRPC_ERROR_LINE = re.compile(r"^\[stream_id=\d+\] (?:grpc-status: (?!0$)\d+|x-bf-status: .*)$")


def grpc_errors_in_verbose(output: str) -> int:
    """Responses (each starts with a `:status` line) whose printed headers say gRPC error: a
    trailers-only answer with grpc-status != 0 (Envoy's own replies, most gRPC errors) or the
    service's x-bf-status error header. h2load does not print trailers, so a successful call's
    `grpc-status: 0` is never seen; an error is counted once per response."""
    errors, flagged = 0, True
    for line in output.splitlines():
        if _STATUS_LINE.match(line):
            flagged = False
        elif not flagged and _GRPC_ERROR_LINE.match(line):
            errors += 1
            flagged = True
    return errors


class PythonClient:
    """Fallback load generator: asyncio HTTP/1.1 over raw keep-alive sockets, grpc.aio for gRPC."""

    name = "python-asyncio"

    def __init__(self, grpc_conns: int) -> None:
        import grpc

        self.grpc_conns = grpc_conns
        self.version = f"python {platform.python_version()}, grpcio {grpc.__version__}"

    def run(self, target: Target, c: int, n: int) -> LoadResult:
        before = resource.getrusage(resource.RUSAGE_SELF)
        latencies, errors, elapsed = asyncio.run(self._run(target, c, n))
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return LoadResult(sorted(latencies), errors, elapsed, cpu)

    async def _run(self, target: Target, c: int, n: int) -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        left = n
        if target.grpc:
            import grpc

            from service.gen.batchgate.v1 import batchgate_pb2 as pb

            request = pb.CancelBatchRequest.FromString(target.body[5:])
            address = target.url.split("//", 1)[1].split("/", 1)[0]
            channels = [grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
                        for _ in range(min(c, self.grpc_conns))]
            calls = [ch.unary_unary(GRPC_METHOD, request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=lambda b: b) for ch in channels]

            async def worker(index: int) -> None:
                nonlocal left, errors
                call = calls[index % len(calls)]
                while left > 0:
                    left -= 1
                    t0 = time.perf_counter()
                    try:
                        await call(request, timeout=30)
                        latencies.append((time.perf_counter() - t0) * 1000)
                    except grpc.aio.AioRpcError:
                        errors += 1

            start = time.perf_counter()
            await asyncio.gather(*(worker(i) for i in range(c)))
            elapsed = time.perf_counter() - start
            for ch in channels:
                await ch.close()
            return latencies, errors, elapsed
        hostport, _, path = target.url.split("//", 1)[1].partition("/")
        host, port = hostport.rsplit(":", 1)
        head = f"POST /{path} HTTP/1.1\r\nhost: {hostport}\r\ncontent-length: {len(target.body)}\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in target.headers.items())
        raw = head.encode() + b"\r\n" + target.body

        async def worker() -> None:
            nonlocal left, errors
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                while left > 0:
                    left -= 1
                    t0 = time.perf_counter()
                    writer.write(raw)
                    status = int((await reader.readline()).split()[1])
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.decode("latin-1").partition(":")
                        if name.strip().lower() == "content-length":
                            length = int(value)
                    await reader.readexactly(length)
                    if 200 <= status < 300:
                        latencies.append((time.perf_counter() - t0) * 1000)
                    else:
                        errors += 1
            finally:
                writer.close()

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        return latencies, errors, time.perf_counter() - start


# --------------------------------------------------------------------------------------------------
# Checks


def wait_until_sane(system: System, timeout: float = 20.0) -> None:
    """Retries the sanity check until it passes: Envoy may route only after its first health check."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            sanity_check(system)
            return
        except Exception as err:  # noqa: BLE001 - any failure is retried until the deadline
            if time.monotonic() > deadline:
                raise HarnessError(f"the paths did not answer correctly within {timeout:g} s: {err}") from None
            time.sleep(0.2)


def sanity_check(system: System) -> None:
    """One call per path with ordinary clients: each must answer `cancelling` for bench1."""
    import grpc

    from service.gen.batchgate.v1 import batchgate_pb2 as pb
    from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc

    for target in [t for t in targets(system) if not t.grpc]:
        status, body = _http("POST", target.url, target.body, target.headers)
        data = json.loads(body) if body.startswith(b"{") else {}
        if status != 200 or data.get("status") != "cancelling":
            raise HarnessError(f"{target.name}: expected 200 cancelling, got {status} {body[:300]!r}")
    for port in (system.stack.grpc_port, system.stack.http_port):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = pb_grpc.BatchServiceStub(channel).Cancel(
                pb.CancelBatchRequest(batch_id=BATCH_ID, provider="openai"), timeout=10
            )
        if answer.status != "cancelling" or answer.id != BATCH_ID:
            raise HarnessError(f"gRPC on port {port}: unexpected answer {answer}")


def detector_self_test(system: System, client) -> None:
    """Known-bad requests on every path must all be counted as errors, else error counts lie."""
    for target in targets(system, bad=True):
        result = client.run(target, 1, 3)
        if result.errors != 3:
            raise HarnessError(f"error detection is broken on {target.name}: 3 bad requests, {result.errors} counted")


# --------------------------------------------------------------------------------------------------
# Phases


def measure(client, system: System, target: Target, c: int, n: int, warm: int) -> Run:
    groups = system.groups_for(target)
    if warm:
        client.run(target, c, max(warm, c))
    before = groups.cpu()
    result = client.run(target, c, n)
    after = groups.cpu()
    run = Run(target.name, c, n, result, {k: after[k] - before[k] for k in after})
    log(
        f"{target.name:<12} c={c:<3} n={n:<6} errors={result.errors:<5} {run.rps:8.0f} req/s  "
        f"p50={run.pct(50):6.2f} p90={run.pct(90):6.2f} p99={run.pct(99):7.2f} ms  "
        f"cpu/req svc={run.cpu_us_per_req('service'):5.0f}us envoy={run.cpu_us_per_req('envoy'):4.0f}us "
        f"client={run.cpu_us_per_req('client'):4.0f}us"
    )
    return run


def limit_check_cost(client, system: System, rounds: int, n: int) -> list[str]:
    """Lines (verdicts first) on what a rate-limit check adds; see the module docstring. The order of
    the paths rotates from round to round (whatever runs first or last in a round is not favoured),
    and the key without a limit runs twice per round: the difference between those two (an A/A
    pair) is the noise floor the other differences stand against."""
    import copy
    import statistics

    by_name = {t.name: t for t in targets(system)}
    again = copy.copy(by_name["rest_vk_open"])
    again.name = "rest_vk_open_again"
    by_name[again.name] = again
    names = [name for name in ("rest_vk_open", again.name, "rest_vk_embedded", "rest_vk_open_redis", "rest_vk_redis")
             if name in by_name]
    p50s: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names):] + names[: i % len(names)]:
            p50s[name].append(percentile(client.run(by_name[name], 1, n).latencies_ms, 50))

    def added(name: str, reference: str = "rest_vk_open") -> float:
        return statistics.median(a - b for a, b in zip(p50s[name], p50s[reference]))

    lines = []
    # Each limited key against a key without a limit on the same gateway.
    for name, reference, store in (("rest_vk_embedded", "rest_vk_open", "embedded"),
                                   ("rest_vk_redis", "rest_vk_open_redis", "Redis")):
        if name not in p50s:
            lines.append(f"n/a   rate-limit check, {store} store: not measured (no redis-server)")
            continue
        value = added(name, reference)
        verdict = "PASS" if value <= TARGET_LIMIT_C1_P50_MS else "MISS"
        lines.append(f"{verdict}  rate-limit check, {store} store: REST via Envoy c=1 p50 {value:+.3f} ms over the "
                     f"same call by a key without a limit (median of {rounds} rounds of {n}; target <= "
                     f"{TARGET_LIMIT_C1_P50_MS} ms)")
    lines.append(f"      noise floor: the key without a limit against itself {added(again.name):+.3f} ms")
    for name in names:
        values = ", ".join(f"{v:.2f}" for v in p50s[name])
        lines.append(f"      {name} p50 per round (ms): {values}")
    for store, (p50, p99) in asyncio.run(_check_in_process(system.redis_url)).items():
        lines.append(f"      in-process RateLimiter.check, {store} store: p50 {p50:.0f} us, p99 {p99:.0f} us")
    return lines


async def _check_in_process(redis_url: str, n: int = 3000) -> dict[str, tuple[float, float]]:
    from service.config import RateLimit
    from service.limits import EmbeddedStore, RateLimiter, RedisStore

    limit = RateLimit("bench", 1_000_000_000, 3600.0)
    out = {}
    with tempfile.TemporaryDirectory(prefix="batchgate-bench-limits-") as tmp:
        stores = {"embedded": EmbeddedStore(Path(tmp) / "rate-limits.sqlite3")}
        if redis_url:
            stores["redis"] = RedisStore(redis_url)
        for name, store in stores.items():
            limiter = RateLimiter(store)
            for _ in range(300):
                await limiter.check("bench-in-process", limit)
            times = []
            for _ in range(n):
                started = time.perf_counter()
                await limiter.check("bench-in-process", limit)
                times.append((time.perf_counter() - started) * 1e6)
            await limiter.close()
            times.sort()
            out[name] = (times[n // 2], times[int(n * 0.99)])
    return out


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def results_table(runs: list[Run], labels: dict[str, str]) -> str:
    base = {r.c: r for r in runs if r.target == "baseline"}
    lines = [
        "| path | c | requests | errors | req/s | p50 ms | p90 ms | p99 ms | overhead p50 ms | overhead p99 ms "
        "| service CPU us/req | Envoy CPU us/req | sim CPU us/req | client CPU us/req |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in runs:
        b = base.get(r.c)
        no_overhead = r.target in ("baseline", "grpc_floor") or b is None
        over50 = "-" if no_overhead else fmt(r.pct(50) - b.pct(50))
        over99 = "-" if no_overhead else fmt(r.pct(99) - b.pct(99))
        lines.append(
            f"| {labels[r.target]} | {r.c} | {r.n} | {r.result.errors} | {r.rps:.0f} | {fmt(r.pct(50))} "
            f"| {fmt(r.pct(90))} | {fmt(r.pct(99))} | {over50} | {over99} | {fmt(r.cpu_us_per_req('service'), 0)} "
            f"| {fmt(r.cpu_us_per_req('envoy'), 0)} | {fmt(r.cpu_us_per_req('sim'), 0)} "
            f"| {fmt(r.cpu_us_per_req('client'), 0)} |"
        )
    return "\n".join(lines)


def evaluate_targets(runs: list[Run], high_c: int, rss_growth: float | None) -> list[str]:
    by = {(r.target, r.c): r for r in runs}

    def over(path: str, c: int, p: float) -> float:
        if (path, c) not in by or ("baseline", c) not in by:
            return math.nan
        return by[(path, c)].pct(p) - by[("baseline", c)].pct(p)

    def verdict(ok: bool | None) -> str:
        return "n/a " if ok is None else ("PASS" if ok else "MISS")

    out = []
    value = over("rest_envoy", 1, 50)
    out.append(f"{verdict(None if math.isnan(value) else value <= TARGET_REST_C1_P50_MS)}  REST via Envoy c=1 p50 "
               f"overhead {fmt(value, 3)} ms (target <= {TARGET_REST_C1_P50_MS} ms)")
    value = over("rest_envoy", 1, 99)
    out.append(f"{verdict(None if math.isnan(value) else value <= TARGET_REST_C1_P99_MS)}  REST via Envoy c=1 p99 "
               f"overhead {fmt(value, 3)} ms (target <= {TARGET_REST_C1_P99_MS} ms)")
    value = over("grpc_direct", 1, 50)
    out.append(f"{verdict(None if math.isnan(value) else value <= TARGET_GRPC_C1_P50_MS)}  gRPC direct c=1 p50 "
               f"overhead {fmt(value, 3)} ms (target <= {TARGET_GRPC_C1_P50_MS} ms)")
    rest64 = by.get(("rest_envoy", 64))
    if rest64 is None:
        out.append(f"n/a   REST via Envoy c=64 (this run used c={high_c}): target >= {TARGET_REST_C64_RPS} req/s, "
                   f"0 errors, p99 <= {TARGET_REST_C64_P99_MS:g} ms")
    else:
        ok = rest64.rps >= TARGET_REST_C64_RPS and rest64.result.errors == 0 and rest64.pct(99) <= TARGET_REST_C64_P99_MS
        out.append(f"{verdict(ok)}  REST via Envoy c=64: {rest64.rps:.0f} req/s, {rest64.result.errors} errors, "
                   f"p99 {fmt(rest64.pct(99))} ms (target >= {TARGET_REST_C64_RPS} req/s, 0 errors, "
                   f"p99 <= {TARGET_REST_C64_P99_MS:g} ms)")
    if rss_growth is None:
        out.append("n/a   service RSS flat within 10% from 10k to 200k requests: run `python -m bench.run --rss-soak 200000`")
    else:
        out.append(f"{verdict(abs(rss_growth) <= TARGET_RSS_GROWTH)}  service RSS from 10k requests to the end: "
                   f"{rss_growth * 100:+.1f}% (target within 10%)")
    return out


def machine_info(client, args: argparse.Namespace) -> list[str]:
    from gateway.stack import default_envoy_concurrency, default_workers

    import grpc

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    envoy = shutil.which("envoy", path=str(Path(sys.executable).parent)) or "envoy"
    return [
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"- machine: {len(os.sched_getaffinity(0))} cores (nproc), {model}, {platform.platform()}",
        f"- load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
        "(other work on the machine makes absolute numbers noisy)",
        f"- python {platform.python_version()}, grpcio {grpc.__version__}, envoy {_envoy_version(envoy)}",
        f"- load generator: {client.name} ({client.version}), one client thread; gRPC: "
        f"c calls over min(c, {args.grpc_conns}) HTTP/2 connections; REST and baseline: HTTP/1.1, one connection per "
        "concurrent request",
        f"- service workers: {default_workers()}, Envoy --concurrency {default_envoy_concurrency()} "
        "(WORKERS / ENVOY_CONCURRENCY)",
    ]


def _envoy_version(binary: str) -> str:
    text = tool_version([binary, "--version"])
    match = re.search(r"/(\d+\.\d+\.\d+)/", text)
    return match.group(1) if match else text


# --------------------------------------------------------------------------------------------------
# Modes


def run_benchmark(args: argparse.Namespace, client, system: System, workdir: Path) -> int:
    smoke = args.smoke
    levels = [(1, args.c1_requests, args.c1_warmup), (args.concurrency, args.c64_requests, args.c64_warmup)]
    groups = system.groups()
    all_targets = targets(system)
    labels = {t.name: t.label for t in all_targets}
    info = machine_info(client, args)
    rss_before = groups.rss("service")
    envoy_rss_before = groups.rss("envoy")
    started = time.monotonic()
    runs: list[Run] = []
    for c, n, warm in levels:
        for target in all_targets:
            runs.append(measure(client, system, target, c, n, warm))
    rss_after = groups.rss("service")
    envoy_rss_after = groups.rss("envoy")
    # What the service process handled: every gateway path's measured and warm-up requests.
    total_requests = sum(r.n + warm for r in runs for c, _, warm in levels
                         if c == r.c and r.target not in ("baseline", "grpc_floor"))
    elapsed = time.monotonic() - started

    limit_lines = limit_check_cost(client, system, *((4, 100) if smoke else (12, 300)))
    table = results_table(runs, labels)
    verdicts = evaluate_targets(runs, args.concurrency, None) + limit_lines
    rss_line = (
        f"- service RSS: {rss_before / 1024:.1f} MiB before the first request, {rss_after / 1024:.1f} MiB after "
        f"{total_requests:,} requests through the service, warm-ups included "
        f"({(rss_after - rss_before) / max(rss_before, 1) * 100:+.1f}%); "
        f"Envoy RSS {envoy_rss_before / 1024:.1f} -> {envoy_rss_after / 1024:.1f} MiB"
    )
    cpu_lines = []
    cores = len(os.sched_getaffinity(0))
    for r in runs:
        if r.c == args.concurrency and r.target == "rest_envoy":
            parts = {g: r.cpu_us_per_req(g) for g in ("service", "envoy", "sim", "client")}
            whole, gateway = sum(parts.values()), parts["service"] + parts["envoy"]
            cpu_lines.append(
                f"- CPU budget, REST via Envoy at c={r.c}: {whole:.0f} us of CPU per request on this machine "
                f"(service+Envoy {gateway:.0f}, simulator+load generator {whole - gateway:.0f}): {cores} cores cap it near "
                f"{cores * 1e6 / whole:.0f} req/s; with the simulator and load generator elsewhere, near "
                f"{cores * 1e6 / gateway:.0f} req/s (if the service used every core)"
            )
    for r in runs:
        if r.c == args.concurrency and r.target not in ("baseline", "grpc_floor"):
            total = r.cpu_us_per_req("service") + r.cpu_us_per_req("envoy")
            cpu_lines.append(
                f"- CPU per request at c={r.c}, {labels[r.target]}: service {fmt(r.cpu_us_per_req('service'), 0)} us + "
                f"Envoy {fmt(r.cpu_us_per_req('envoy'), 0)} us = {fmt(total, 0)} us (simulator "
                f"{fmt(r.cpu_us_per_req('sim'), 0)} us, load generator {fmt(r.cpu_us_per_req('client'), 0)} us)"
            )
    title = "batchgate benchmark" + (" (smoke)" if smoke else "")
    md = [
        f"# {title}",
        "",
        "Generated by `python -m bench.run" + (" --smoke" if smoke else "") + "`. Latencies are client-side (h2load "
        "per-request log), in milliseconds; overhead = path minus baseline at the same percentile and concurrency. "
        "Baseline = the provider simulator called directly (the lower bound); every path calls that same simulator "
        "process. The reference row is a trivial grpc.aio servicer without any upstream call (bench/floor.py): "
        "what grpc.aio alone costs here.",
        "",
        table,
        "",
        rss_line,
        *cpu_lines,
        "",
        "## Targets (reported, not enforced)",
        "",
        "```",
        *verdicts,
        "```",
        "",
        "## Machine",
        "",
        *info,
        f"- measured phases took {elapsed:.1f} s; load average at end: "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("smoke.md" if smoke else "results.md")
    if not smoke:
        backend = plot(runs, labels, args.concurrency, RESULTS / "latency.png")
        md += [f"![latency percentiles per path](latency.png) (plotted with {backend})", ""]
    out.write_text("\n".join(md))
    print()
    print(table)
    print()
    print(rss_line)
    for line in cpu_lines:
        print(line)
    print()
    for line in verdicts:
        print(line)
    print(f"\nwrote {out.relative_to(ROOT)}" + ("" if smoke else " and bench/results/latency.png"))
    if args.profile:
        profile(args, client, system, groups, all_targets[1], workdir)
    errors = sum(r.result.errors for r in runs)
    if smoke and errors:
        print(f"SMOKE FAILED: {errors} errors", file=sys.stderr)
        return 1
    return 0


def plot(runs: list[Run], labels: dict[str, str], high_c: int, out: Path) -> str:
    if not ensure_pip_requirements(ROOT / "bench" / "requirements.txt", "matplotlib"):
        log("matplotlib not installable: writing the fallback bar chart")
    panels = []
    for c, what in ((1, "latency"), (high_c, "under load")):
        series = [(labels[r.target], r.result.latencies_ms) for r in runs if r.c == c]
        panels.append((f"c={c} ({what})", series))
    return write_png(panels, out, "batchgate: client-side latency percentiles per path (same simulator)")


def run_soak(args: argparse.Namespace, client, system: System) -> int:
    groups = system.groups()
    info = machine_info(client, args)
    target = next(t for t in targets(system) if t.name == "rest_envoy")
    chunk, done, errors = 10_000, 0, 0
    rows: list[tuple[int, int, int, float, float]] = []
    rss_start = groups.rss("service")
    log(f"RSS soak: {args.rss_soak:,} requests REST via Envoy at c={args.concurrency}, reading RSS every {chunk:,}")
    client.run(target, args.concurrency, 1000)
    started = time.monotonic()
    while done < args.rss_soak:
        n = min(chunk, args.rss_soak - done)
        result = client.run(target, args.concurrency, n)
        done += n
        errors += result.errors
        rss = groups.rss("service")
        rows.append((done, rss, groups.rss("envoy"), n / result.elapsed_s, percentile(result.latencies_ms, 99)))
        log(f"{done:>8,} requests  service RSS {rss / 1024:7.1f} MiB  {rows[-1][3]:6.0f} req/s  "
            f"p99 {rows[-1][4]:6.2f} ms  errors {result.errors}")
    first = rows[0][1]
    growth = (rows[-1][1] - first) / first
    verdicts = evaluate_targets([], args.concurrency, growth)
    md = [
        "# batchgate RSS soak",
        "",
        f"`python -m bench.run --rss-soak {args.rss_soak}`: REST via Envoy, c={args.concurrency}, "
        f"{args.rss_soak:,} requests in {time.monotonic() - started:.0f} s, {errors} errors. Service RSS "
        f"(VmRSS, all service processes) {rss_start / 1024:.1f} MiB before the first request.",
        "",
        "| requests | service RSS MiB | Envoy RSS MiB | req/s (chunk) | p99 ms (chunk) |",
        "|--:|--:|--:|--:|--:|",
        *(f"| {d:,} | {r / 1024:.1f} | {e / 1024:.1f} | {rps:.0f} | {p99:.2f} |" for d, r, e, rps, p99 in rows),
        "",
        f"- service RSS at {rows[0][0]:,} requests: {first / 1024:.1f} MiB; at {done:,}: {rows[-1][1] / 1024:.1f} MiB "
        f"({growth * 100:+.1f}%)",
        "",
        "```",
        verdicts[-1],
        "```",
        "",
        *info,
        f"- load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.md").write_text("\n".join(md))
    print("\n" + verdicts[-1] + "\nwrote bench/results/soak.md")
    return 1 if errors else 0


def profile(args: argparse.Namespace, client, system: System, groups: Groups, target: Target, workdir: Path) -> None:
    """py-spy on the service (all its processes) during an extra REST c=64 run; a self/inclusive
    summary goes to bench/results/profile.md, the collapsed stacks to profile.txt."""
    if not ensure_pip_requirements(ROOT / "bench" / "requirements-profile.txt", "py_spy") and not shutil.which(
        "py-spy", path=str(Path(sys.executable).parent)
    ):
        log("py-spy not installable: no profile")
        return
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        log("py-spy not found after install: no profile")
        return
    raw = workdir / "profile.txt"
    raw.unlink(missing_ok=True)
    pid = groups.roots["service"][0]
    cmd = [spy, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--output", str(raw),
           "--subprocesses"]
    # --native pauses the process for each sample (it cannot be combined with --nonblocking).
    cmd.append("--native" if args.profile_native else "--nonblocking")
    log(f"profiling the service (pid {pid}) under REST via Envoy c={args.concurrency}: {' '.join(cmd[1:])}")
    spy_proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    time.sleep(1.0)
    result = client.run(target, args.concurrency, args.profile_requests)
    spy_proc.send_signal(signal.SIGINT)
    try:
        _, err = spy_proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        spy_proc.kill()
        _, err = spy_proc.communicate()
    if not raw.exists():
        log(f"py-spy wrote nothing: {err.decode(errors='replace')[-400:]}")
        return
    summary = summarize_profile(raw.read_text())
    text = [
        "# batchgate service profile",
        "",
        f"py-spy ({' '.join(cmd[1:])}) on the service while h2load sent {args.profile_requests:,} REST requests "
        f"through Envoy at c={args.concurrency} ({args.profile_requests / result.elapsed_s:.0f} req/s under the "
        "profiler; py-spy slows the service, most with --native, which pauses it for every sample).",
        "",
        *summary,
        "",
    ]
    (RESULTS / "profile.md").write_text("\n".join(text))
    print("\n".join(text))


def summarize_profile(collapsed: str, top: int = 25) -> list[str]:
    self_counts: dict[str, int] = {}
    incl_counts: dict[str, int] = {}
    idle = total = 0
    for line in collapsed.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f and not f.startswith("process ")]
        total += count
        if frames and _idle_frame(frames[-1]):
            idle += count
        if frames:
            self_counts[_short(frames[-1])] = self_counts.get(_short(frames[-1]), 0) + count
        for name in {_short(f) for f in frames}:
            incl_counts[name] = incl_counts.get(name, 0) + count
    if not total:
        return ["(no samples)"]
    lines = [f"{total} samples, {idle * 100 / total:.0f}% of them waiting in epoll/select (idle).", "",
             "Top self time (leaf frame):", "", "| % samples | frame |", "|--:|---|"]
    for name, count in sorted(self_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {count * 100 / total:.1f} | `{name}` |")
    lines += ["", "Top inclusive time:", "", "| % samples | frame |", "|--:|---|"]
    for name, count in sorted(incl_counts.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {count * 100 / total:.1f} | `{name}` |")
    return lines


def _short(frame: str) -> str:
    # py-spy raw frames look like "function (path/to/file.py:123)"; keep function and file name.
    match = re.match(r"^(.*?) \((.*?)(?::\d+)?\)$", frame)
    if not match:
        return frame
    func, path = match.groups()
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if len(parts) >= 2 else path
    return f"{func} ({short})"


def _idle_frame(frame: str) -> bool:
    return bool(re.match(r"^(epoll_wait|EpollSelector\.select|select|poll) ", frame))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="~10 s: c=1 and c=8, writes smoke.md")
    parser.add_argument("--rss-soak", type=int, metavar="N", help="only the RSS soak: N REST requests at c=64")
    parser.add_argument("--profile", action="store_true", help="after the run, py-spy the service under REST c=64")
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--profile-requests", type=int, default=10_000)
    parser.add_argument("--c1-requests", type=int)
    parser.add_argument("--c64-requests", type=int)
    parser.add_argument("--concurrency", type=int, help="the high concurrency level (64; 8 with --smoke)")
    parser.add_argument("--grpc-conns", type=int, default=8)
    parser.add_argument("--client", choices=("h2load", "python"), default="h2load")
    parser.add_argument("--envoy-concurrency", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--no-floor", action="store_true", help="skip the trivial grpc.aio reference path")
    args = parser.parse_args(argv)
    if args.smoke:
        defaults = dict(c1_requests=300, c64_requests=600, concurrency=8, c1_warmup=50, c64_warmup=100)
    else:
        defaults = dict(c1_requests=2000, c64_requests=20_000, concurrency=64, c1_warmup=200, c64_warmup=2000)
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.envoy_concurrency is not None:
        os.environ["ENVOY_CONCURRENCY"] = str(args.envoy_concurrency)
    if args.workers is not None:
        os.environ["WORKERS"] = str(args.workers)

    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    ensure_generated_code()
    with tempfile.TemporaryDirectory(prefix="batchgate-bench-") as tmp:
        workdir = Path(tmp)
        binary = ensure_h2load() if args.client == "h2load" else None
        if binary:
            client = H2Load(binary, workdir, args.grpc_conns)
        else:
            if args.client == "h2load":
                log("h2load unavailable (not installed and not installable): falling back to the Python client")
            client = PythonClient(args.grpc_conns)
        log(f"load generator: {client.name} ({client.version})")
        system = System(workdir)
        try:
            system.start()
            if not args.no_floor and not args.rss_soak:
                system.start_floor()
            if not args.rss_soak:
                system.start_redis_gateway()
            log(f"simulator {system.sim_url}, Envoy {system.envoy_url}, service {system.grpc_url}")
            wait_until_sane(system)
            detector_self_test(system, client)
            if args.rss_soak:
                return run_soak(args, client, system)
            return run_benchmark(args, client, system, workdir)
        except HarnessError as err:
            print(f"bench: {err}", file=sys.stderr)
            if system.stack is not None:
                print(system.logs_tail(), file=sys.stderr)
            return 2
        finally:
            system.stop()


if __name__ == "__main__":
    sys.exit(main())
