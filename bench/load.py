"""Load generation: one path (a `Target`) at concurrency c for n requests -> every latency, the
errors, the elapsed time and the load generator's own CPU.

h2load (Debian nghttp2-client), one client thread, is the load generator. It speaks HTTP/1.1 and
h2c, bounds runs by request count and logs every request's latency (--log-file), and costs 20-60 us
of CPU per request (reported: a tenth of what the service costs; the simulator called through it
reaches >10k req/s), so it is not the bottleneck. gRPC calls are a prebuilt length-prefixed protobuf
frame posted with `content-type: application/grpc`; since gRPC errors arrive with HTTP 200, the gRPC
runs use `-v` and count responses whose headers carry `grpc-status` != 0 (trailers-only) or the
service's `x-bf-status` error header; a self-test (bench/paths.py) sends known-bad requests on every
path first and checks that each is counted.

Without h2load (or with --client python) `PythonClient` is used instead (raw HTTP/1.1 and grpc.aio):
correct but much costlier per request, so its throughput numbers understate the gateway.
"""

from __future__ import annotations

import asyncio
import math
import platform
import re
import resource
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from bench.common import GRPC_METHOD, HarnessError, log, percentile
from bench.install import tool_version
from bench.procs import Groups


@dataclass
class Target:
    """One path under test: how h2load (or the Python client) calls it."""

    name: str
    label: str
    url: str  # full URL, query included
    grpc: bool
    headers: dict[str, str]
    body: bytes


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


class LoadClient(Protocol):
    name: str
    version: str

    def run(self, target: Target, c: int, n: int) -> LoadResult: ...


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
        latencies, errors, elapsed = asyncio.run(
            self._run_grpc(target, c, n) if target.grpc else self._run_http(target, c, n)
        )
        after = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        return LoadResult(sorted(latencies), errors, elapsed, cpu)

    async def _run_grpc(self, target: Target, c: int, n: int) -> tuple[list[float], int, float]:
        # Imported here: the generated code may only exist once bench.run has run `make proto`.
        import grpc

        from service.gen.batchgate.v1 import batchgate_pb2 as pb

        latencies: list[float] = []
        errors = 0
        left = n
        request = pb.CancelBatchRequest.FromString(target.body[5:])
        address = target.url.split("//", 1)[1].split("/", 1)[0]
        channels = [
            grpc.aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range(min(c, self.grpc_conns))
        ]
        calls = [
            ch.unary_unary(
                GRPC_METHOD, request_serializer=lambda m: m.SerializeToString(), response_deserializer=lambda b: b
            )
            for ch in channels
        ]

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

    async def _run_http(self, target: Target, c: int, n: int) -> tuple[list[float], int, float]:
        latencies: list[float] = []
        errors = 0
        left = n
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


def measure(client: LoadClient, groups: Groups, target: Target, c: int, n: int, warm: int) -> Run:
    """A warm-up of `warm` requests, then `n` measured ones with the CPU of `groups` read around them."""
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
