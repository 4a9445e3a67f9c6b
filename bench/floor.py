"""`python -m bench.floor [--port 0]`: a trivial grpc.aio BatchService whose Cancel answers a fixed
batch without any upstream call. Prints `FLOOR_PORT=<port>` once serving.

`python -m bench.run --floor` measures it next to the real paths: the cost of grpc.aio itself on
this machine (same server options as the service), i.e. what the service could at best reach while
staying a Python grpc.aio process.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

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


async def serve(port: int) -> None:
    server = grpc.aio.server(
        options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 1 << 20), ("grpc.http2.bdp_probe", 0)]
    )
    pb_grpc.add_BatchServiceServicer_to_server(FixedServicer(), server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"FLOOR_PORT={bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor")
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
