"""Wiring: the grpc.aio server with the batch servicer, health, reflection, and graceful shutdown."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from service.config.file import Config
from service.config.settings import DEFAULTS, Settings
from service.edge.api import BatchServicer, rest_error_metadata
from service.edge.callers import address_of
from service.edge.operation_proto import operation_json
from service.edge.operations import OperationsServicer
from service.edge.wire import MAX_MESSAGE_BYTES, Admit, Reading, StrictRegistrar, quiet_grpc_metadata_log
from service.gen.batchgate.v1 import batchgate_pb2, batchgate_pb2_grpc
from service.infra.concurrency import Lease
from service.infra.limits import RateLimiter
from service.infra.observability import start_metrics
from service.infra.operation_store import OperationStore, open_operation_store
from service.infra.timing import Timing
from service.infra.webhook import WebhookSender
from service.runtime.live import FileWatcher, LiveConfig
from service.usecases.cancel import Canceller
from service.usecases.operations import OperationPolicy, Operations, Webhook, Worker
from service.usecases.operations.worker import UNIX_TIME

log = logging.getLogger(__name__)

SERVICE_NAME = batchgate_pb2.DESCRIPTOR.services_by_name["BatchService"].full_name
OPERATIONS_SERVICE_NAME = operations_pb2.DESCRIPTOR.services_by_name["Operations"].full_name
# The largest answer a worker sends (a done operation of 100,000 batches is ~15 MB in protobuf).
MAX_SEND_BYTES = 64 << 20
GRACE_SECONDS = 10.0


class App:
    """A running service: the server, its port, its (live) config and what must be closed on shutdown."""

    def __init__(
        self,
        server: grpc.aio.Server,
        port: int,
        servicer: BatchServicer,
        health: health.aio.HealthServicer,
        operations: Operations,
    ):
        self.server, self.port, self.servicer, self.health = server, port, servicer, health
        self.live, self.operations = servicer.live, operations

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
        `drain_delay` (DRAIN_DELAY_SECONDS: time for Envoy's health checks, 1 s apart, 2 failures, to
        move traffic to other replicas; calls keep being served meanwhile)
        new calls are refused and in-flight ones get `grace` to finish; then the pools close."""
        self.servicer.draining = True
        await self.health.enter_graceful_shutdown()
        if drain_delay:
            await asyncio.sleep(drain_delay)
        # Operations leave as calls do: what is in flight finishes, the rest is another worker's.
        await asyncio.gather(self.server.stop(grace), self.operations.close(grace))
        await self.operations.store.close()
        if self.operations.worker.webhook is not None:
            await self.operations.worker.webhook.sender.close()
        await self.live.close()
        await self.live.limiter.close()


@dataclass(frozen=True, slots=True)
class OperationsSetup:
    """Where long-running operations live and how they run: in `store`, else in the Redis of
    `governance.store`, else in the SQLite file `db` (None: a private file, removed at stop); with
    `policy` (tests make it fast), on `timing` (unix time; tests move it)."""

    store: OperationStore | None = None
    db: str | Path | None = None
    policy: OperationPolicy = OperationPolicy()
    timing: Timing = UNIX_TIME


@dataclass(frozen=True, slots=True)
class Listener:
    """Where the server listens: `address` (port 0 picks a free one), `extra` addresses (a worker's
    own loopback port or Unix socket, Envoy's endpoint), `reuse_port` (share the port with the other
    workers) and `tls`: (private key PEM, certificate chain PEM) to serve gRPC over TLS."""

    address: str = "127.0.0.1:0"
    extra: tuple[str, ...] = ()
    reuse_port: bool = False
    tls: tuple[bytes, bytes] | None = None


def admission(live: LiveConfig) -> Admit:
    """Takes each call's lease on its caller's share, under the config current at its start: its
    credentials when that config knows them, else its address (service.edge.callers)."""

    def admit(method: str, headers: dict[str, str], peer: str) -> Lease:
        runtime = live.current
        limits = runtime.config.client.limits
        caller = runtime.canceller.auth.caller_key(headers) or address_of(headers, peer, limits.trusted_proxies)
        return live.calls.enter(caller, limits)

    return admit


async def create_server(
    config: Config | LiveConfig,
    listener: Listener = Listener(),
    settings: Settings = DEFAULTS,
    operations: OperationsSetup = OperationsSetup(),
    fair_share: bool = True,
) -> App:
    """Builds and starts the server and returns it (`App.port` is the first address's port). A
    plain Config never changes (its rate limiter is the one `governance.store` names, closed with
    the server); a LiveConfig can be reloaded. Of `settings` it reads the request read timeout;
    `operations` says where long-running operations are kept. `fair_share` False lets every caller
    hold any number of calls: only for the benchmark's comparison (bench/bounds_cost.py)."""
    server = grpc.aio.server(
        options=[
            ("grpc.so_reuseport", 1 if listener.reuse_port else 0),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
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
    live = config if isinstance(config, LiveConfig) else LiveConfig(config)
    store_config = live.current.config.store
    store = operations.store or open_operation_store(store_config.type, store_config.url, operations.db)
    webhook = Webhook(operation_json, WebhookSender())
    running = Operations(Worker(store, live, timing=operations.timing, policy=operations.policy, webhook=webhook))
    servicer = BatchServicer(live, running)
    # Every call passes the door (header bytes, its caller's share) and reads its request itself, so
    # a malformed call always gets a status (service.edge.wire). The registrar stands in for the
    # server: it has the two methods the add_*_to_server functions call.
    quiet_grpc_metadata_log()
    admit = admission(live) if fair_share else None
    strict = StrictRegistrar(server, Reading(settings.request_read_timeout_seconds, rest_error_metadata, admit))
    registrar = cast(grpc.aio.Server, strict)
    # Generated by grpcio-tools without annotations:
    batchgate_pb2_grpc.add_BatchServiceServicer_to_server(servicer, registrar)  # type: ignore[no-untyped-call]
    operations_pb2_grpc.add_OperationsServicer_to_server(OperationsServicer(running), registrar)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, registrar)
    reflection_servicer = reflection.aio.ReflectionServicer(
        (SERVICE_NAME, OPERATIONS_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
    )
    # types-grpcio-reflection leaves this one unannotated:
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(reflection_servicer, registrar)  # type: ignore[no-untyped-call]
    credentials = grpc.ssl_server_credentials([listener.tls]) if listener.tls is not None else None
    addresses = (listener.address, *listener.extra)
    ports = [
        server.add_insecure_port(addr) if credentials is None else server.add_secure_port(addr, credentials)
        for addr in addresses
    ]
    if 0 in ports:
        raise OSError(f"cannot listen on {addresses[ports.index(0)]}")
    port = ports[0]
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running.start_background()
    return App(server, port, servicer, health_servicer, running)


async def serve(live: LiveConfig, listener: Listener, settings: Settings, fair_share: bool = True) -> None:
    """Runs until SIGINT/SIGTERM, then drains (`settings.drain_delay_seconds`) and exits. A config
    loaded from a file is reloaded on SIGHUP and when the file changes. Serves /metrics unless
    `settings.metrics_port` is 0."""
    operations = OperationsSetup(db=settings.batchgate_operations_db)
    app = await create_server(live, listener, settings, operations, fair_share)
    if settings.metrics_port:
        start_metrics(settings.metrics_host, settings.metrics_port, lambda: live.current.canceller.breaker_states())
    # Everything allocated so far lives as long as the process: keep it out of the collector's way.
    gc.freeze()
    log.info("batchgate gRPC listening on %s", listener.address.rsplit(":", 1)[0] + f":{app.port}")
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
    await app.stop(drain_delay=settings.drain_delay_seconds)
