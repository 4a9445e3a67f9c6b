"""`python -m bench.own_code [--calls N] [--rounds R] [--grpc] [--against REV]`: the CPU batchgate's own
code takes per single cancel, in one process, without grpc's C core, aiohttp or a network.

One call is what a worker does for a REST cancel as Envoy passes it (its metadata, captured from the
gateway's Envoy), or with `--grpc` a direct gRPC call carrying its own x-request-id: the door and the
request reading (service.edge.wire), the RPC wrapper (request id, span, metrics, the access and audit
lines, written as JSON to a file as a worker's stderr is), the servicer, the use case, the executor's
retry loop, masking and parsing the answer and building the proto of the answer. Only two things are
stand-ins: grpc.aio's context (the request already decoded) and aiohttp's request, which answers
from memory what the simulator answers for the benchmark's batch. The garbage collector runs as in a
worker (what was set up is frozen first).

Whole-stack numbers (`python -m bench.run`, `bench.ab`) move by tens of microseconds from run to run
on a shared machine; this resolves a few. It prints the CPU per call (process time over `--calls`
calls after a warm-up) of each of `--rounds` rounds. `--against REV` runs the same measurement in a
temporary git worktree of another revision too, alternating rounds, and prints both with the median
of the per-round differences: the in-process A/B of README's experiments table.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import BATCH_ID, ROOT

# The metadata a worker receives from the gateway's Envoy for `POST /v1/batches/bench1/cancel?provider=openai`.
REST_METADATA = (
    ("user-agent", "h2load nghttp2/1.52.0"),
    ("x-forwarded-for", "192.0.2.2"),
    ("x-forwarded-proto", "http"),
    ("x-envoy-external-address", "127.0.0.1"),
    ("x-request-id", "219bb4fd-f0ff-4bff-8802-342fe2ef5309"),
    ("x-bf-request-type", "batch_cancel"),
    ("x-envoy-original-path", f"/v1/batches/{BATCH_ID}/cancel?provider=openai"),
    ("x-envoy-original-method", "POST"),
    ("x-envoy-expected-rq-timeout-ms", "3660000"),
)
GRPC_METADATA = (("user-agent", "grpc-python/1.85.1"), ("x-request-id", "bench-grpc-call"))
# What the simulator answers a cancel of the benchmark's batch.
ANSWER_HEADERS = (
    ("x-request-id", "req_3dad4a914be1be23c4951ef8d5ad657a"),
    ("Content-Type", "application/json"),
    ("Content-Length", "480"),
    ("Date", "Tue, 08 Dec 2026 04:41:46 GMT"),
    ("Server", "Python/3.11 aiohttp/3.14.5"),
)
ANSWER_BODY = json.dumps(
    {
        "id": BATCH_ID,
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "errors": None,
        "input_file_id": "file-sandbox-input",
        "completion_window": "24h",
        "status": "cancelling",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": 1796704906,
        "in_progress_at": 1796704906,
        "expires_at": 1796791306,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": 1796704906,
        "cancelled_at": None,
        "request_counts": {"total": 100, "completed": 10, "failed": 0},
        "metadata": None,
    },
    separators=(",", ":"),
).encode()


class Aborted(Exception):
    """What grpc.aio's abort raises."""


class Context:
    """The part of grpc.aio's ServicerContext a cancel uses; the request is decoded already."""

    def __init__(self, request: Any, metadata: tuple[tuple[str, str], ...]) -> None:
        self._request, self._metadata = request, metadata

    async def read(self) -> Any:
        return self._request

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def peer(self) -> str:
        return "unix:"

    def time_remaining(self) -> float | None:
        return None

    async def send_initial_metadata(self, metadata: Any) -> None:
        pass

    async def abort(self, code: Any, details: str = "") -> None:
        raise Aborted(details)

    async def abort_with_status(self, status: Any) -> None:
        raise Aborted(status.details)


async def measure(calls: int, grpc_call: bool, log_file: Path) -> float:
    """Microseconds of CPU per call, over `calls` calls after a warm-up."""
    from multidict import CIMultiDict, CIMultiDictProxy

    from bench.system import bench_config
    from sandbox.server import gateway_config
    from service.config.settings import Settings
    from service.edge.api import rest_error_metadata
    from service.edge.server import admission
    from service.edge.wire import Reading, StrictRegistrar
    from service.gen.batchgate.v1 import batchgate_pb2 as pb
    from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
    from service.infra.observability import configure_logging
    from service.infra.providers.base import UpstreamResponse
    from service.infra.providers.catalog import parse_config
    from service.infra.providers.http import HttpExecutor, RetryPolicy
    from service.runtime.build import Collaborators, RuntimeFactory
    from service.runtime.live import LiveConfig

    answer_headers = CIMultiDictProxy(CIMultiDict(ANSWER_HEADERS))

    class MemoryExecutor(HttpExecutor):
        """The real executor with aiohttp's request answered from memory."""

        async def _send_once(self, request: Any, timeout: float) -> Any:
            return UpstreamResponse(200, answer_headers, ANSWER_BODY)

    def executor(name: str, config: Any, breaker: Any) -> HttpExecutor:
        return MemoryExecutor(config, breaker, RetryPolicy.from_network(config.network))

    class Registry:
        """Collects the handlers the generated add_*_to_server function registers."""

        def __init__(self) -> None:
            self.handlers: dict[str, Any] = {}

        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
            self.handlers.update(handlers)

    config = parse_config(bench_config(gateway_config("http://127.0.0.1:9")), env={})
    live = LiveConfig(config, factory=RuntimeFactory.for_config(config, Collaborators(executor=executor)))
    from service.edge.api import BatchServicer

    with log_file.open("a") as stream:
        settings = Settings.from_env()
        configure_logging(settings)
        logging.getLogger().handlers[0].setStream(stream)  # type: ignore[attr-defined]
        registry = Registry()
        reading = Reading(settings.request_read_timeout_seconds, rest_error_metadata, admission(live))
        pb_grpc.add_BatchServiceServicer_to_server(BatchServicer(live), StrictRegistrar(registry, reading))
        cancel = registry.handlers["Cancel"].stream_unary
        request = pb.CancelBatchRequest(batch_id=BATCH_ID, provider="openai")
        context = Context(request, GRPC_METADATA if grpc_call else REST_METADATA)
        answer = await cancel(None, context)
        if answer.status != "cancelling":
            raise SystemExit(f"unexpected answer: {answer}")
        for _ in range(max(200, calls // 10)):
            await cancel(None, context)
        gc.collect()
        gc.freeze()
        started = time.process_time()
        for _ in range(calls):
            await cancel(None, context)
        spent = time.process_time() - started
        await live.close()
        await live.limiter.close()
    return spent / calls * 1e6


def _worktree(rev: str, into: Path) -> Path:
    """A checkout of `rev` with this checkout's generated code (the same protos assumed)."""
    subprocess.run(["git", "worktree", "add", "--detach", str(into), rev], cwd=ROOT, check=True, capture_output=True)
    shutil.copytree(ROOT / "service" / "gen", into / "service" / "gen", dirs_exist_ok=True)
    return into


def _run_in(checkout: Path, args: argparse.Namespace) -> float:
    """One round in `checkout`, in a fresh process whose imports are that checkout's (this file is
    run from here: the other revision may not have it)."""
    argv = [__file__, "--calls", str(args.calls), "--rounds", "1", "--quiet", *(["--grpc"] if args.grpc else [])]
    script = f"import runpy, sys; sys.argv = {argv!r}; runpy.run_path({__file__!r}, run_name='__main__')"
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=checkout,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(checkout)},
    )
    return float(out.stdout.split()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.own_code", description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--grpc", action="store_true", help="a direct gRPC call (default: REST through Envoy)")
    parser.add_argument("--against", metavar="REV", help="also measure this git revision, in alternating rounds")
    parser.add_argument("--quiet", action="store_true", help="print only the number (one round)")
    args = parser.parse_args(argv)
    what = "gRPC direct" if args.grpc else "REST via Envoy"
    if args.against is None:
        with tempfile.TemporaryDirectory(prefix="batchgate-own-") as tmp:
            results = [asyncio.run(measure(args.calls, args.grpc, Path(tmp) / "log")) for _ in range(args.rounds)]
        if args.quiet:
            print(f"{results[0]:.2f}")
            return
        print(f"{what}: batchgate's own CPU per call (us) per round: {', '.join(f'{r:.1f}' for r in results)}")
        return
    with tempfile.TemporaryDirectory(prefix="batchgate-own-ab-") as tmp:
        other = _worktree(args.against, Path(tmp) / "other")
        try:
            here, there = [], []
            for i in range(args.rounds):
                order = [(ROOT, here), (other, there)]
                for checkout, results in order if i % 2 == 0 else order[::-1]:
                    results.append(_run_in(checkout, args))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT, check=False)
    difference = statistics.median(a - b for a, b in zip(here, there, strict=True))
    print(f"{what}, batchgate's own CPU per call (us), {args.calls:,} calls per round:")
    print(f"  this checkout: {', '.join(f'{r:.1f}' for r in here)}")
    print(f"  {args.against}: {', '.join(f'{r:.1f}' for r in there)}")
    print(f"  median difference per round: {difference:+.1f} us")


if __name__ == "__main__":
    main()
