"""Typed clients for `batchgate.v1.BatchService`: `BatchgateClient` (blocking) and
`AsyncBatchgateClient` (asyncio), with the same methods and arguments.

Both hold one gRPC channel (create one client and reuse it), send the virtual key as `x-bf-vk`
metadata on every call, give every call a deadline, retry UNAVAILABLE a few times within that
deadline (`retry.RetryPolicy`), and raise failures as `errors.BatchgateError` subclasses.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb
from batchgate_client._proto.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from batchgate_client.errors import BatchgateError, from_detail, from_rpc_error
from batchgate_client.retry import DEFAULT_RETRY, RetryPolicy

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TIMEOUT = 30.0
VIRTUAL_KEY_HEADER = "x-bf-vk"
REQUEST_ID_HEADER = "x-request-id"
# Statuses after which a batch does not change any more (what `wait_seconds` waits for).
TERMINAL_STATUSES = frozenset({"cancelled", "completed", "failed", "expired", "ended"})

BatchCancelResponse = pb.BatchCancelResponse
HealthResponse = pb.HealthResponse


@dataclass(frozen=True, slots=True)
class BatchRef:
    """One batch to cancel: the provider's batch id and the provider that holds it."""

    id: str
    provider: str


# What `cancel_many` accepts per item: a BatchRef, a mapping with "id" and "provider", or an
# (id, provider) pair, the order of `cancel(batch_id, provider)`.
ItemLike = BatchRef | Mapping[str, Any] | tuple[str, str]


@dataclass(frozen=True, slots=True)
class CancelEvent:
    """One step of one item of `cancel_many`: the batch's state (`batch`) or its failure (`error`).
    Every item ends with exactly one event whose `final` is true."""

    index: int
    id: str
    provider: str
    final: bool
    batch: pb.BatchCancelResponse | None = None
    error: BatchgateError | None = None

    @property
    def status(self) -> str:
        """The batch's status, or `error`."""
        return self.batch.status if self.batch is not None else "error"

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        """The REST stream's line for this event: `batch` is the single-cancel body, `error` the
        single-cancel error body."""
        line: dict[str, Any] = {"index": self.index, "id": self.id, "provider": self.provider, "final": self.final}
        if self.error is not None:
            line["error"] = self.error.to_dict()
        elif self.batch is not None:
            line["batch"] = batch_to_dict(self.batch)
        return line


def batch_to_dict(batch: pb.BatchCancelResponse) -> dict[str, Any]:
    """The REST body of a cancel (the JSON Envoy's transcoder prints for it)."""
    return json_format.MessageToDict(batch, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)


def batch_ref(item: ItemLike) -> BatchRef:
    """Normalises one `cancel_many` item; TypeError/ValueError for anything else."""
    if isinstance(item, BatchRef):
        ref = item
    elif isinstance(item, Mapping):
        ref = BatchRef(item.get("id"), item.get("provider"))  # type: ignore[arg-type]
    elif isinstance(item, (tuple, list)) and len(item) == 2:
        ref = BatchRef(*item)
    else:
        raise TypeError(f"a batch to cancel is a BatchRef, a mapping or an (id, provider) pair, not {item!r}")
    if not isinstance(ref.id, str) or not isinstance(ref.provider, str):
        raise TypeError(f"batch id and provider must be strings: {item!r}")
    return ref


def _wait(wait_seconds: int) -> int:
    if isinstance(wait_seconds, bool) or not isinstance(wait_seconds, int) or wait_seconds < 0:
        raise ValueError(f"wait_seconds must be a whole number of seconds >= 0, not {wait_seconds!r}")
    return wait_seconds


def _event(message: pb.CancelManyEvent, request_id: str | None) -> CancelEvent:
    which = message.WhichOneof("result")
    return CancelEvent(
        index=message.index,
        id=message.id,
        provider=message.provider,
        final=message.final,
        batch=message.batch if which == "batch" else None,
        error=from_detail(message.error, request_id=request_id) if which == "error" else None,
    )


def _request_id(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "x-request-id" and isinstance(value, str):
            return value
    return None


def _credentials(tls_ca: str | Path | bytes | None, tls: bool | None) -> grpc.ChannelCredentials | None:
    """TLS credentials: `tls_ca` a PEM file (or its bytes) to trust, or `tls=True` for the system's
    roots. None for a plaintext channel."""
    if tls_ca is not None:
        pem = tls_ca if isinstance(tls_ca, bytes) else Path(tls_ca).read_bytes()
        return grpc.ssl_channel_credentials(root_certificates=pem)
    if tls:
        return grpc.ssl_channel_credentials()
    return None


class _Base:
    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        vk: str | None = None,
        tls_ca: str | Path | bytes | None = None,
        tls: bool | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy = DEFAULT_RETRY,
        metadata: Iterable[tuple[str, str]] = (),
        clock: Callable[[], float] = time.monotonic,
        rand: random.Random | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.target = target
        self.timeout = timeout
        self.retry = retry
        self._metadata = tuple(metadata) + (((VIRTUAL_KEY_HEADER, vk),) if vk else ())
        self._fixed_request_id = _request_id(self._metadata)
        self._credentials = _credentials(tls_ca, tls)
        self._clock = clock
        self._rand = rand

    def __repr__(self) -> str:  # never shows the virtual key
        return f"{type(self).__name__}({self.target!r})"

    def _call_metadata(self) -> tuple[tuple[tuple[str, str], ...], str]:
        """One call's metadata and request id: an `x-request-id` of the client's own (kept across
        the call's retries) unless `metadata` set one. The service logs, audits and forwards it, and
        need not send back an id it generated (a gRPC operation of its own: ~0.2 ms a call)."""
        if self._fixed_request_id is not None:
            return self._metadata, self._fixed_request_id
        request_id = uuid.uuid4().hex
        return (*self._metadata, (REQUEST_ID_HEADER, request_id)), request_id

    def _budget(self, timeout: float | None, wait_seconds: int = 0) -> float:
        """A call's deadline in seconds: its timeout plus the time it was asked to wait."""
        return (self.timeout if timeout is None else timeout) + wait_seconds

    def _next_pause(self, err: grpc.RpcError, retry: int, deadline: float) -> float | None:
        if not self.retry.retryable(err.code()):
            return None
        return self.retry.pause(retry, deadline - self._clock(), self._rand)

    def _cancel_request(self, batch_id: str, provider: str, wait_seconds: int) -> pb.CancelBatchRequest:
        if not isinstance(batch_id, str) or not isinstance(provider, str):
            raise TypeError("batch_id and provider must be strings")
        return pb.CancelBatchRequest(batch_id=batch_id, provider=provider, wait_seconds=_wait(wait_seconds))

    @staticmethod
    def _many_request(items: Iterable[ItemLike], wait_seconds: int) -> pb.CancelManyRequest:
        refs = [batch_ref(item) for item in items]
        return pb.CancelManyRequest(
            batches=[pb.BatchRef(id=ref.id, provider=ref.provider) for ref in refs], wait_seconds=_wait(wait_seconds)
        )


class BatchgateClient(_Base):
    """Blocking client. `BatchgateClient("gateway.internal:8080", vk=..., tls_ca="ca.pem")`.

    `timeout` is each call's deadline in seconds, to which a call's `wait_seconds` is added.
    Use it as a context manager, or call `close()`.
    """

    def __init__(
        self, target: str = DEFAULT_TARGET, *, sleep: Callable[[float], None] = time.sleep, **kwargs: Any
    ) -> None:
        super().__init__(target, **kwargs)
        self._sleep = sleep
        if self._credentials is not None:
            self._channel = grpc.secure_channel(target, self._credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        self._stub = pb_grpc.BatchServiceStub(self._channel)

    def __enter__(self) -> BatchgateClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def cancel(
        self, batch_id: str, provider: str, *, wait_seconds: int = 0, timeout: float | None = None
    ) -> pb.BatchCancelResponse:
        """Cancels one batch; with `wait_seconds` answers once it is terminal or the wait ran out
        (then `extra_fields.warning` says so)."""
        request = self._cancel_request(batch_id, provider, wait_seconds)
        return self._unary(self._stub.Cancel, request, self._budget(timeout, wait_seconds))

    def health(self, *, timeout: float | None = None) -> pb.HealthResponse:
        """The service's status (`ok`) and the circuit state per provider; a draining service
        raises `Unavailable` (code `draining`)."""
        return self._unary(self._stub.Health, pb.HealthRequest(), self._budget(timeout))

    def cancel_many(
        self, items: Iterable[ItemLike], *, wait_seconds: int = 0, timeout: float | None = None
    ) -> Iterator[CancelEvent]:
        """Cancels up to 1,000 batches in one call and yields each item's events as they happen.
        Closing the iterator early (or leaving a `for` loop) cancels the call, and the service
        stops its work for it. The call is retried on UNAVAILABLE only until the first event."""
        request = self._many_request(items, wait_seconds)
        return self._stream(request, self._budget(timeout, wait_seconds))

    def _unary(self, method: Callable[..., Any], request: Any, budget: float) -> Any:
        deadline = self._clock() + budget
        metadata, request_id = self._call_metadata()
        retry = 0
        while True:
            try:
                return method(request, timeout=max(0.0, deadline - self._clock()), metadata=metadata)
            except grpc.RpcError as err:
                retry += 1
                pause = self._next_pause(err, retry, deadline)
                if pause is None:
                    raise from_rpc_error(err, request_id) from err
                self._sleep(pause)

    def _stream(self, request: pb.CancelManyRequest, budget: float) -> Iterator[CancelEvent]:
        deadline = self._clock() + budget
        metadata, sent_id = self._call_metadata()
        retry = 0
        while True:
            call = self._stub.CancelMany(request, timeout=max(0.0, deadline - self._clock()), metadata=metadata)
            received = False
            try:
                request_id = sent_id
                for message in call:
                    if not received:
                        received = True
                        request_id = _request_id(call.initial_metadata()) or sent_id
                    yield _event(message, request_id)
                return
            except grpc.RpcError as err:
                retry += 1
                pause = None if received else self._next_pause(err, retry, deadline)
                if pause is None:
                    raise from_rpc_error(err, sent_id) from err
            finally:
                call.cancel()  # no-op once the stream ended; stops the server's work otherwise
            self._sleep(pause)


class AsyncBatchgateClient(_Base):
    """asyncio client with the methods of `BatchgateClient`, as coroutines; `cancel_many` is an
    async iterator (wrap it in `contextlib.aclosing` to cancel the call when leaving early)."""

    def __init__(
        self, target: str = DEFAULT_TARGET, *, sleep: Callable[[float], Awaitable[None]] = asyncio.sleep, **kwargs: Any
    ) -> None:
        super().__init__(target, **kwargs)
        self._sleep = sleep
        if self._credentials is not None:
            self._channel = grpc.aio.secure_channel(target, self._credentials)
        else:
            self._channel = grpc.aio.insecure_channel(target)
        self._stub = pb_grpc.BatchServiceStub(self._channel)

    async def __aenter__(self) -> AsyncBatchgateClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    async def cancel(
        self, batch_id: str, provider: str, *, wait_seconds: int = 0, timeout: float | None = None
    ) -> pb.BatchCancelResponse:
        request = self._cancel_request(batch_id, provider, wait_seconds)
        return await self._unary(self._stub.Cancel, request, self._budget(timeout, wait_seconds))

    async def health(self, *, timeout: float | None = None) -> pb.HealthResponse:
        return await self._unary(self._stub.Health, pb.HealthRequest(), self._budget(timeout))

    def cancel_many(
        self, items: Iterable[ItemLike], *, wait_seconds: int = 0, timeout: float | None = None
    ) -> AsyncIterator[CancelEvent]:
        request = self._many_request(items, wait_seconds)
        return self._stream(request, self._budget(timeout, wait_seconds))

    async def _unary(self, method: Callable[..., Any], request: Any, budget: float) -> Any:
        deadline = self._clock() + budget
        metadata, request_id = self._call_metadata()
        retry = 0
        while True:
            try:
                return await method(request, timeout=max(0.0, deadline - self._clock()), metadata=metadata)
            except grpc.RpcError as err:
                retry += 1
                pause = self._next_pause(err, retry, deadline)
                if pause is None:
                    raise from_rpc_error(err, request_id) from err
                await self._sleep(pause)

    async def _stream(self, request: pb.CancelManyRequest, budget: float) -> AsyncIterator[CancelEvent]:
        deadline = self._clock() + budget
        metadata, sent_id = self._call_metadata()
        retry = 0
        while True:
            call = self._stub.CancelMany(request, timeout=max(0.0, deadline - self._clock()), metadata=metadata)
            received = False
            try:
                request_id = sent_id
                async for message in call:
                    if not received:
                        received = True
                        request_id = _request_id(await call.initial_metadata()) or sent_id
                    yield _event(message, request_id)
                return
            except grpc.RpcError as err:
                retry += 1
                pause = None if received else self._next_pause(err, retry, deadline)
                if pause is None:
                    raise from_rpc_error(err, sent_id) from err
            finally:
                call.cancel()
            await self._sleep(pause)
