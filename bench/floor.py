"""`python -m bench.floor [--port 0] [--socket PATH] [--upstream URL --key KEY]`: a trivial grpc.aio
BatchService whose Cancel answers a fixed batch, on a loopback port and optionally a Unix socket (the
hop the gateway's Envoy takes to its workers). Prints `FLOOR_PORT=<port>` once serving.

`python -m bench.run` measures it next to the real paths (skip with `--no-floor`), twice:
- without `--upstream`, no upstream call: the cost of grpc.aio itself on this machine (same server
  options as the service), what the service could at best reach while staying a grpc.aio process;
- with `--upstream`, one POST per call to the simulator's cancel URL over a pooled aiohttp session
  set up as the service's (its body read and parsed as JSON): the floor of this design's stack,
  grpc.aio plus aiohttp, with none of batchgate's code. gRPC direct minus this row is what
  batchgate's own code (auth, routing, adapters, retries, breaker, logs, metrics) adds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

import aiohttp
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc


class FixedServicer(pb_grpc.BatchServiceServicer):
    def __init__(self) -> None:
        self.answer = pb.BatchCancelResponse(
            id="bench1",
            object="batch",
            status="cancelling",
            request_counts=pb.RequestCounts(total=100, completed=10, failed=0),
            cancelling_at=1_700_000_000,
            extra_fields=pb.ExtraFields(request_type="batch_cancel", provider="openai"),
        )

    async def Cancel(self, request: pb.CancelBatchRequest, context: grpc.aio.ServicerContext) -> pb.BatchCancelResponse:
        return self.answer


class UpstreamServicer(FixedServicer):
    """The fixed answer after one upstream POST, sent and read the way service.infra.providers.http does."""

    def __init__(self, url: str, key: str) -> None:
        super().__init__()
        self.url, self.headers = url, {"Authorization": f"Bearer {key}"}
        self.session: aiohttp.ClientSession | None = None

    async def Cancel(self, request: pb.CancelBatchRequest, context: grpc.aio.ServicerContext) -> pb.BatchCancelResponse:
        if self.session is None:
            connector = aiohttp.TCPConnector(limit=1000, ttl_dns_cache=300, enable_cleanup_closed=True)
            self.session = aiohttp.ClientSession(connector=connector, skip_auto_headers=("Content-Type",))
        async with self.session.post(
            self.url, headers=self.headers, allow_redirects=False, timeout=aiohttp.ClientTimeout(total=30)
        ) as resp:
            body = await resp.read()
        json.loads(body)
        return self.answer


async def serve(port: int, upstream: str | None = None, key: str = "", socket: str | None = None) -> None:
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 1 << 20), ("grpc.http2.bdp_probe", 0)]
    )
    servicer = UpstreamServicer(upstream, key) if upstream else FixedServicer()
    pb_grpc.add_BatchServiceServicer_to_server(servicer, server)
    # Envoy's health checks (bench/system.py puts an edge in front of each reference servicer).
    checks = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checks, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    if socket:
        server.add_insecure_port(f"unix:{socket}")
    await server.start()
    for name in ("", "batchgate.v1.BatchService"):
        await checks.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(f"FLOOR_PORT={bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)
    if isinstance(servicer, UpstreamServicer) and servicer.session is not None:
        await servicer.session.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--upstream", help="POST this URL once per call (the simulator's cancel URL)")
    parser.add_argument("--key", default="", help="the bearer key for --upstream")
    parser.add_argument("--socket", help="also serve on this Unix socket")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.upstream, args.key, args.socket))


if __name__ == "__main__":
    main()
