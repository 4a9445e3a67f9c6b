"""Graceful shutdown of a real service in this process, run by `serve()` as `python -m service`
runs it, over real gRPC against the sandbox: on SIGTERM health turns NOT_SERVING, calls are still
served for DRAIN_DELAY_SECONDS (while Envoy's health checks move traffic away), then new calls are
refused and the service ends (README, Operating)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import Iterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from service.config.settings import Settings
from service.edge.server import SERVICE_NAME, Listener, serve
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc
from service.infra.providers.catalog import parse_config
from service.runtime.live import LiveConfig
from tests.support import config_dict, eventually

# The default drain delay: the headroom for one health check and one cancel after the signal.
DRAIN_DELAY = 3.0
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def new_id() -> str:
    return f"batch_{uuid.uuid4().hex[:16]}"


async def cancel(stub: batchgate_pb2_grpc.BatchServiceStub, batch_id: str) -> pb.BatchCancelResponse:
    return await stub.Cancel(pb.CancelBatchRequest(batch_id=batch_id, provider="openai"), timeout=5)


def _ignore(signum: int, frame: object) -> None:
    """This process's SIGTERM until serve() installs its own: never the end of the test run."""


@contextlib.contextmanager
def signal_handlers_restored() -> Iterator[None]:
    """serve() takes SIGINT, SIGTERM and SIGHUP on the running loop: they are given back after."""
    saved = {sig: signal.getsignal(sig) for sig in HANDLED}
    signal.signal(signal.SIGTERM, _ignore)
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        for sig, handler in saved.items():
            loop.remove_signal_handler(sig)
            signal.signal(sig, handler)


async def test_sigterm_serves_calls_through_the_drain_delay_then_refuses_them(sandbox, sim, tmp_path):
    address = f"unix:{tmp_path / 'service.sock'}"  # no port another process could take meanwhile
    live = LiveConfig(parse_config(config_dict(sandbox.url), env={}))
    settings = Settings(drain_delay_seconds=DRAIN_DELAY, metrics_port=0)
    with signal_handlers_restored():
        server = asyncio.create_task(serve(live, Listener(address), settings))
        async with grpc.aio.insecure_channel(address) as channel:
            stub = batchgate_pb2_grpc.BatchServiceStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def not_serving() -> bool:
                answer = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=5)
                return answer.status == NOT_SERVING

            async def refused() -> bool:
                """A new call is refused (UNAVAILABLE, or CANCELLED when it arrived as the server
                stopped taking calls); until then it is served (NOT_FOUND: no such batch)."""
                refusals = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                try:
                    await cancel(stub, new_id())
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.NOT_FOUND or err.code() in refusals, err
                    return err.code() in refusals
                raise AssertionError("a batch that does not exist was cancelled")

            # serve() listens for SIGTERM now (or it failed to start: then say why).
            await eventually(lambda: server.done() or signal.getsignal(signal.SIGTERM) is not _ignore)
            assert not server.done(), server.exception()
            assert (await cancel(stub, sim.seed("openai", new_id()).id)).status == "cancelling"
            os.kill(os.getpid(), signal.SIGTERM)
            await eventually(not_serving)
            # The drain delay: health says NOT_SERVING and calls are still served.
            during = sim.seed("openai", new_id(), cancel_delay_s=3600).id
            assert (await cancel(stub, during)).status == "cancelling"
            assert await not_serving() and not server.done()
            # After it, new calls are refused, and the service ends.
            await eventually(refused, timeout=DRAIN_DELAY + 10)
        await asyncio.wait_for(server, timeout=30)
    assert sim.batch("openai", during).status == "cancelling"
