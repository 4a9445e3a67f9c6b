"""Wiring: the grpc.aio server with the batch servicer, health, reflection, and graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
from pathlib import Path

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from service.config.file import Config
from service.edge.api import BatchServicer, rest_error_metadata
from service.edge.operation_proto import operation_json
from service.edge.operations import OperationsServicer
from service.edge.wire import StrictRegistrar
from service.gen.batchgate.v1 import batchgate_pb2, batchgate_pb2_grpc
from service.infra.limits import RateLimiter
from service.infra.observability import start_metrics
from service.infra.operation_store import OperationStore, open_operation_store
from service.infra.webhook import WebhookSender
from service.runtime.live import FileWatcher, LiveConfig
from service.usecases.cancel import Canceller
from service.usecases.operations import Operations, Settings

log = logging.getLogger(__name__)

SERVICE_NAME = batchgate_pb2.DESCRIPTOR.services_by_name["BatchService"].full_name
OPERATIONS_SERVICE_NAME = operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name
# The largest answer a worker sends (a done operation of 100,000 batches is ~15 MB in protobuf).
MAX_SEND_BYTES = 64 << 20
GRACE_SECONDS = 10.0
# Between turning NOT_SERVING and refusing calls: Envoy's health checks (1 s interval, 2 failures)
# take this long to move traffic to other replicas.
DRAIN_DELAY_SECONDS = float(os.environ.get("DRAIN_DELAY_SECONDS", "3"))


class App:
    """A running service: the server, its port, its (live) config and what must be closed on shutdown."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        live: LiveConfig,
        servicer: BatchServicer,
        health: health.aio.HealthServicer,
        operations: Operations,
        webhooks: WebhookSender,
    ):
        self.server, self.port, self.live, self.servicer, self.health = server, port, live, servicer, health
        self.operations, self.webhooks = operations, webhooks

    @property
    def canceller(self) -> Canceller:
        """The canceller of the config running now (it changes on reload)."""
        return self.live.current.canceller

    @property
    def limiter(self) -> RateLimiter:
        """The process's rate limiter (it outlives reloads)."""
        return self.live.limiter

    async def stop(self, grace: float = GRACE_SECONDS, drain_delay: float = 0.0) -> None:
        """Drains: health turns NOT_SERVING (and REST /health 503) so Envoy stops routing here; after
        `drain_delay` (time for its health checks to notice; calls keep being served meanwhile)
        new calls are refused and in-flight ones get `grace` to finish; then the pools close."""
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        if drain_delay:
            await asyncio.sleep(drain_delay)
        # Operations leave as calls do: what is in flight finishes, the rest is another worker's.
        await asyncio.gather(self.server.stop(grace), self.operations.close(grace))
        await self.operations.store.close()
        await self.webhooks.close()
        await self.live.close()
        await self.live.limiter.close()


async def create_server(
    config: Config | LiveConfig,
    address: str = "127.0.0.1:0",
    *extra_addresses: str,
    reuse_port: bool = False,
    tls: tuple[bytes, bytes] | None = None,
    limiter: RateLimiter | None = None,
    operations_db: str | Path | None = None,
    operation_store: OperationStore | None = None,
    operation_settings: Settings | None = None,
) -> App:
    """Builds and starts the server on `address` (port 0 picks a free one) and any extra addresses,
    and returns it (`App.port` is the first address's port). `tls` is (private key PEM, certificate
    chain PEM) to serve gRPC over TLS. A plain Config never changes; a LiveConfig can be reloaded.
    `limiter` (the process's rate limiter and its store; default: the store `governance.store`
    names) serves a plain Config; a LiveConfig brings its own. It is closed with the server.
    Long-running operations live in `operation_store`, else in the Redis of `governance.store`,
    else in the SQLite file `operations_db` (None: a private file, removed at stop)."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_receive_message_length", 1 << 20),
            # A done operation's answer lists every batch it matched (up to 100,000, ~15 MB): the
            # send limit is set, not left to the library's default.
            ("grpc.max_send_message_length", MAX_SEND_BYTES),
            # Envoy admits 60 KiB of request headers, and they all arrive as metadata (a long path
            # twice): accept that much so an oversized id gets our 400, not a gRPC refusal.
            ("grpc.max_metadata_size", 64 << 10),
            ("grpc.absolute_max_metadata_size", 64 << 10),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            # No BDP pings: they size flow-control windows for large transfers, while every message
            # here is a few hundred bytes; without them a call costs about 60 us less CPU under load.
            ("grpc.http2.bdp_probe", 0),
        ]
    )
    live = config if isinstance(config, LiveConfig) else LiveConfig(config, limiter=limiter)
    settings = live.current.config.store
    store = operation_store or open_operation_store(settings.type, settings.url, operations_db)
    webhooks = WebhookSender()
    operations = Operations(store, live, settings=operation_settings, render=operation_json, notifier=webhooks)
    servicer = BatchServicer(live, operations)
    # Every method reads its request itself, so a malformed call always gets a status (service.edge.wire).
    registrar = StrictRegistrar(server, rest_error_metadata)
    batchgate_pb2_grpc.add_BatchServiceServicer_to_server(servicer, registrar)
    operations_pb2_grpc.add_OperationsServicer_to_server(OperationsServicer(operations), registrar)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        reflection.aio.ReflectionServicer(
            (SERVICE_NAME, OPERATIONS_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
        ),
        registrar,
    )
    credentials = grpc.ssl_server_credentials([tls]) if tls is not None else None
    ports = [
        server.add_insecure_port(addr) if credentials is None else server.add_secure_port(addr, credentials)
        for addr in (address, *extra_addresses)
    ]
    if 0 in ports:
        raise OSError(f"cannot listen on {(address, *extra_addresses)[ports.index(0)]}")
    port = ports[0]
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    operations.start_background()
    return App(server, port, live, servicer, health_servicer, operations, webhooks)


async def serve(
    config: Config | LiveConfig,
    address: str,
    *extra_addresses: str,
    reuse_port: bool = False,
    tls: tuple[bytes, bytes] | None = None,
    metrics_port: int | None = None,
    drain_delay: float = DRAIN_DELAY_SECONDS,
    limiter: RateLimiter | None = None,
    operations_db: str | Path | None = None,
) -> None:
    """Runs until SIGINT/SIGTERM, then drains and exits. A config loaded from a file is reloaded on
    SIGHUP and when the file changes."""
    app = await create_server(
        config,
        address,
        *extra_addresses,
        reuse_port=reuse_port,
        tls=tls,
        limiter=limiter,
        operations_db=operations_db,
    )
    live = app.live
    if metrics_port:
        start_metrics(metrics_port, lambda: live.current.canceller.breaker_states())
    # Everything allocated so far lives as long as the process: keep it out of the collector's way.
    gc.freeze()
    log.info("batchgate gRPC listening on %s", address.rsplit(":", 1)[0] + f":{app.port}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, live.reload)
    watcher = asyncio.create_task(FileWatcher(live).run()) if live.path is not None else None
    await stop.wait()
    log.info("shutting down: draining in-flight calls")
    if watcher is not None:
        watcher.cancel()
    await app.stop(drain_delay=drain_delay)
