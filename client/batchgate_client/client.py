"""`BatchgateClient` (blocking) and `AsyncBatchgateClient` (asyncio): the same methods, arguments
and results, one with `await`.

Both hold one gRPC channel (create one client and reuse it), send the virtual key as `x-bf-vk`
metadata on every call, give every call a deadline, retry only what cannot reach a provider twice
(`retry.RetryPolicy`), return typed results (`models`) and raise failures as `errors.BatchgateError`
subclasses. Everything they share (argument checks, requests, retry bookkeeping) is in `_calls`.
"""

from __future__ import annotations

import asyncio
import difflib
import random
import time
import warnings
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any, Self, TypedDict, TypeVar, Unpack

import grpc
import grpc.aio
from google.longrunning import operations_proto_pb2 as operations_pb
from google.protobuf import empty_pb2

from batchgate_client import _calls
from batchgate_client._calls import (
    DEFAULT_TARGET,
    DEFAULT_TIMEOUT,
    MAX_ITEMS_PER_CALL,
    REQUEST_ID_HEADER,
    VIRTUAL_KEY_HEADER,
    CaFile,
    ItemLike,
    MetadataLike,
    TimeLike,
    batch_ref,
)
from batchgate_client._convert import (
    batch_from_proto,
    event_from_proto,
    health_from_proto,
    operation_from_proto,
    operations_page_from_proto,
)
from batchgate_client._proto.batchgate.v1 import batchgate_pb2 as pb
from batchgate_client.errors import BatchgateError, from_rpc_error
from batchgate_client.models import (
    TERMINAL_STATUSES,
    Batch,
    BatchRef,
    CancelEvent,
    Health,
    Operation,
    OperationsPage,
    SelectorStatus,
)
from batchgate_client.retry import RetryPolicy

__all__ = [
    "DEFAULT_TARGET",
    "DEFAULT_TIMEOUT",
    "MAX_ITEMS_PER_CALL",
    "REQUEST_ID_HEADER",
    "TERMINAL_STATUSES",
    "VIRTUAL_KEY_HEADER",
    "AsyncBatchgateClient",
    "AsyncCancelStream",
    "BatchCancelResponse",
    "BatchRef",
    "BatchgateClient",
    "CancelEvent",
    "CancelStream",
    "HealthResponse",
    "ItemLike",
    "TimeLike",
    "batch_ref",
    "batch_to_dict",
]

# The protobuf messages behind `Batch` and `Health` (`.raw`), under their 0.1 names.
BatchCancelResponse = pb.BatchCancelResponse
HealthResponse = pb.HealthResponse

_T = TypeVar("_T")


class _DeprecatedHooks(TypedDict, total=False):
    """Test hooks the 0.1 constructors took; still honoured, with a DeprecationWarning."""

    sleep: Callable[[float], Any]
    clock: Callable[[], float]
    rand: random.Random


def batch_to_dict(batch: Batch | pb.BatchCancelResponse) -> dict[str, Any]:
    """The REST body of a cancel (the JSON Envoy's transcoder prints for it); `Batch.to_dict()`."""
    return (batch if isinstance(batch, Batch) else batch_from_proto(batch)).to_dict()


def _legacy_hooks(owner: str, hooks: _DeprecatedHooks) -> _DeprecatedHooks:
    unknown = set(hooks) - set(_DeprecatedHooks.__annotations__)
    if unknown:
        name = sorted(unknown)[0]
        known = ("target", "vk", "timeout", "tls", "tls_ca", "retry", "metadata")
        guess = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean {guess[0]!r}? " if guess else ""
        raise TypeError(f"{owner}() got an unexpected keyword argument {name!r} ({hint}it takes {', '.join(known)})")
    if hooks:
        warnings.warn(
            f"{owner}({', '.join(f'{name}=' for name in hooks)}): test hooks are no longer constructor "
            "arguments; they will be removed (batchgate_client.testing.retry_hooks sets them)",
            DeprecationWarning,
            stacklevel=3,
        )
    return hooks


class CancelStream(Iterator[CancelEvent]):
    """The events of `BatchgateClient.cancel_many`, as they happen. Lazy: the first call is sent
    when iteration starts. Closing it (`close()`, the end of its `with` block, or leaving a `for`
    loop over it once it is garbage-collected) cancels the call in flight, and the service stops
    its work for it."""

    def __init__(self, events: Generator[CancelEvent, None, None]) -> None:
        self._events = events
        self._started = False
        self._closed = False

    def __iter__(self) -> CancelStream:
        return self

    def __next__(self) -> CancelEvent:
        self._started = True
        return next(self._events)

    def close(self) -> None:
        """Cancels the call in flight (if any); iteration then ends."""
        self._closed = True
        self._events.close()

    def __enter__(self) -> CancelStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __del__(self) -> None:
        if not self._started and not self._closed:
            warnings.warn(
                "cancel_many(...) was never iterated: nothing was cancelled", RuntimeWarning, stacklevel=2, source=self
            )


class AsyncCancelStream(AsyncIterator[CancelEvent]):
    """The events of `AsyncBatchgateClient.cancel_many`, as they happen. Lazy: the first call is
    sent when iteration starts. `async with` it, or wrap it in `contextlib.aclosing`, so leaving
    early cancels the call in flight (the service then stops its work for it)."""

    def __init__(self, events: AsyncGenerator[CancelEvent, None]) -> None:
        self._events = events
        self._started = False
        self._closed = False

    def __aiter__(self) -> AsyncCancelStream:
        return self

    async def __anext__(self) -> CancelEvent:
        self._started = True
        return await self._events.__anext__()

    async def aclose(self) -> None:
        """Cancels the call in flight (if any); iteration then ends."""
        self._closed = True
        await self._events.aclose()

    async def __aenter__(self) -> AsyncCancelStream:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    def __del__(self) -> None:
        if not self._started and not self._closed:
            warnings.warn(
                "cancel_many(...) was never iterated: nothing was cancelled", RuntimeWarning, stacklevel=2, source=self
            )


class _ClientBase:
    """What the twins hold alike: the checked arguments, the retries' time and randomness, and
    whether the client was closed."""

    def __init__(
        self,
        target: str,
        *,
        vk: str | None,
        timeout: float,
        tls: bool | None,
        tls_ca: CaFile | None,
        retry: RetryPolicy | None,
        metadata: MetadataLike,
        sleep: Callable[[float], Any],
        deprecated: _DeprecatedHooks,
    ) -> None:
        hooks = _legacy_hooks(type(self).__name__, deprecated)
        self._settings = _calls.settings(
            target, vk=vk, timeout=timeout, tls=tls, tls_ca=tls_ca, retry=retry, metadata=metadata
        )
        self._hooks = _calls.Hooks(sleep=sleep)
        self._closed = False
        self._use_hooks(**hooks)

    @property
    def target(self) -> str:
        """The address the client connects to."""
        return self._settings.target

    @property
    def timeout(self) -> float:
        """Each call's deadline in seconds, unless the call gives its own (plus its wait)."""
        return self._settings.timeout

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every call."""
        return self._settings.retry

    def _use_hooks(
        self,
        *,
        sleep: Callable[[float], Any] | None = None,
        clock: Callable[[], float] | None = None,
        rand: random.Random | None = None,
    ) -> Self:
        """Replaces sleeping (a coroutine function for the asyncio client), the clock and the jitter's
        randomness of the retries: batchgate_client.testing.retry_hooks is the public way."""
        self._hooks.sleep = sleep or self._hooks.sleep
        self._hooks.clock = clock or self._hooks.clock
        self._hooks.rand = rand or self._hooks.rand
        return self

    def __repr__(self) -> str:  # never shows the virtual key
        return f"{type(self).__name__}({self.target!r})"

    def _check_open(self) -> None:
        if self._closed:
            raise _calls.closed_error()

    def _attempts(self, budget: float) -> _calls.Attempts:
        return _calls.Attempts(self._settings, budget, self._hooks.clock, self._hooks.rand)


class BatchgateClient(_ClientBase):
    """Blocking client for batchgate's gRPC API (the service's port, or Envoy's, which passes gRPC
    through).

        with BatchgateClient("gateway.internal:8080", vk=os.environ["BATCHGATE_VK"], tls=True) as client:
            batch = client.cancel("batch_abc123", "openai", wait_seconds=600)

    Arguments (keyword-only after `target`), checked here with TypeError / ValueError:

    - `target`: HOST:PORT (default 127.0.0.1:50051).
    - `vk`: the virtual key, sent as `x-bf-vk` on every call; never in `repr` or errors.
    - `timeout`: each call's deadline in seconds (default 30), to which its `wait_seconds` is added.
    - `tls`: True connects with TLS trusting the system's roots.
    - `tls_ca`: a PEM file (path) or PEM bytes to trust instead; implies TLS. An empty, unreadable or
      certificate-less one is an error, never a fall back to the system's roots.
    - `retry`: a `RetryPolicy` (default: 3 attempts, only failures that cannot reach a provider twice).
    - `metadata`: extra (key, value) pairs sent with every call, e.g. a fixed `x-request-id`.

    Use it as a context manager, or call `close()`; a closed client raises `ClientClosed`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        vk: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        tls: bool | None = None,
        tls_ca: CaFile | None = None,
        retry: RetryPolicy | None = None,
        metadata: MetadataLike = (),
        **_deprecated: Unpack[_DeprecatedHooks],
    ) -> None:
        super().__init__(
            target,
            vk=vk,
            timeout=timeout,
            tls=tls,
            tls_ca=tls_ca,
            retry=retry,
            metadata=metadata,
            sleep=time.sleep,
            deprecated=_deprecated,
        )
        credentials = self._settings.credentials
        self._channel = (
            grpc.secure_channel(target, credentials) if credentials is not None else grpc.insecure_channel(target)
        )
        self._cancel = self._channel.unary_unary(
            _calls.CANCEL_METHOD,
            request_serializer=pb.CancelBatchRequest.SerializeToString,
            response_deserializer=pb.BatchCancelResponse.FromString,
        )
        self._cancel_many = self._channel.unary_stream(
            _calls.CANCEL_MANY_METHOD,
            request_serializer=pb.CancelManyRequest.SerializeToString,
            response_deserializer=pb.CancelManyEvent.FromString,
        )
        self._health = self._channel.unary_unary(
            _calls.HEALTH_METHOD,
            request_serializer=pb.HealthRequest.SerializeToString,
            response_deserializer=pb.HealthResponse.FromString,
        )
        self._cancel_matching = self._channel.unary_unary(
            _calls.CANCEL_MATCHING_METHOD,
            request_serializer=pb.CancelMatchingRequest.SerializeToString,
            response_deserializer=operations_pb.Operation.FromString,
        )
        self._get_operation = self._channel.unary_unary(
            _calls.GET_OPERATION_METHOD,
            request_serializer=operations_pb.GetOperationRequest.SerializeToString,
            response_deserializer=operations_pb.Operation.FromString,
        )
        self._list_operations = self._channel.unary_unary(
            _calls.LIST_OPERATIONS_METHOD,
            request_serializer=operations_pb.ListOperationsRequest.SerializeToString,
            response_deserializer=operations_pb.ListOperationsResponse.FromString,
        )
        self._wait_operation = self._channel.unary_unary(
            _calls.WAIT_OPERATION_METHOD,
            request_serializer=operations_pb.WaitOperationRequest.SerializeToString,
            response_deserializer=operations_pb.Operation.FromString,
        )
        self._cancel_operation = self._channel.unary_unary(
            _calls.CANCEL_OPERATION_METHOD,
            request_serializer=operations_pb.CancelOperationRequest.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        self._delete_operation = self._channel.unary_unary(
            _calls.DELETE_OPERATION_METHOD,
            request_serializer=operations_pb.DeleteOperationRequest.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )

    def __enter__(self) -> BatchgateClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in flight are cancelled and later calls raise `ClientClosed`.
        Closing twice is harmless."""
        self._closed = True
        self._channel.close()

    def cancel(
        self,
        batch_id: str,
        provider: str,
        *,
        wait_seconds: int = 0,
        timeout: float | None = None,
        ok_if_ended: bool = False,
    ) -> Batch:
        """Cancels one batch and returns its state after the call.

        `wait_seconds` (0-3,600): keep reading the batch back until it is terminal or the time ran
        out (then `warning` says so). `timeout` replaces the client's for this call. With
        `ok_if_ended`, a batch that had already ended (batchgate's 409) is returned as a `Batch` with
        `status` "ended" and `already_ended` true instead of raising `Conflict`.
        Raises a `BatchgateError` subclass (`NotFound`, `Conflict`, `PermissionDenied`, ...).
        """
        request = _calls.cancel_request(batch_id, provider, wait_seconds)
        try:
            answer = self._unary(self._cancel, request, _calls.budget(self._settings, timeout, wait_seconds))
        except BatchgateError as error:
            return _calls.settle(error, ok_if_ended, batch_id, provider)
        return batch_from_proto(answer)

    def health(self, *, timeout: float | None = None) -> Health:
        """The service's status (`ok`), each provider's circuit, the rate-limit store and the config
        each worker runs. A draining service raises `Unavailable` with code `draining`."""
        return health_from_proto(self._unary(self._health, pb.HealthRequest(), _calls.budget(self._settings, timeout)))

    def cancel_many(
        self,
        items: Iterable[ItemLike],
        *,
        wait_seconds: int = 0,
        timeout: float | None = None,
        ok_if_ended: bool = False,
    ) -> CancelStream:
        """Cancels many batches and yields each item's events as they happen (`CancelEvent`).

        `items` are `BatchRef`s, (id, provider) pairs or {"id", "provider"} mappings, checked now;
        the calls are lazy: nothing is sent until the stream is iterated. A list over 1,000 items
        goes as consecutive calls of 1,000; `index` is always the position in `items`. Each call
        has its own deadline (`timeout` plus `wait_seconds`) and is retried only before its first
        event. An item's failure is its event's `error`; a call that fails as a whole (refused,
        unreachable, cut off) raises from the iteration. `ok_if_ended` turns an item's 409 (already
        ended) into a batch event, as for `cancel`. Close the stream (or use it in a `with` block)
        to stop early: the call in flight is cancelled and the service stops its work for it.
        """
        requests = _calls.many_requests(items, wait_seconds)
        budget = _calls.budget(self._settings, timeout, wait_seconds)
        return CancelStream(self._events(requests, budget, ok_if_ended))

    def cancel_matching(
        self,
        *,
        providers: Iterable[str] | None = None,
        statuses: Iterable[SelectorStatus] | None = None,
        created_after: TimeLike | None = None,
        created_before: TimeLike | None = None,
        metadata: Mapping[str, str] | None = None,
        batches: Iterable[ItemLike] | None = None,
        validate_only: bool = False,
        max_batches: int | None = None,
        wait: bool = False,
        deadline_seconds: int | None = None,
        notify_url: str | None = None,
        timeout: float | None = None,
    ) -> Operation:
        """Starts cancelling every batch that matches (a kill switch) and returns the long-running
        `Operation` at once (`operations/<id>`, state `listing`); follow it with `wait_operation`
        or `get_operation`.

        The selector: `providers` (None: every provider the caller may use that can list batches),
        `statuses` (None: validating, in_progress, finalizing), `created_after` (inclusive) and
        `created_before` (exclusive) as timezone-aware datetimes or unix seconds, `metadata` pairs
        that must all equal the batch's own; or exactly the named `batches` (BatchRefs, (id,
        provider) pairs or mappings, up to 1,000; then leave the filters out).
        `validate_only`: a dry run, the result lists every match (outcome `matched`) and nothing is
        cancelled. `max_batches` (None: 100; up to 100,000): more matches and the operation ends
        with an `error` (code 9, `Conflict`) having cancelled nothing. `wait`: done only once every
        cancelled batch reads a terminal status. `deadline_seconds` (None: 3,600; up to 86,400): how
        long the service keeps retrying. `notify_url`: a webhook batchgate POSTs the finished
        operation to (its config must allow the URL). `timeout` replaces the client's for this call.

        Needs the gateway's admin credentials or a virtual key with `allow_cancel_matching`
        (`PermissionDenied` otherwise; explicit `batches` need only the normal cancel permission).
        Raises TypeError / ValueError for bad arguments before sending, `InvalidRequest` for what
        the service refuses (an unknown provider, a notify URL not allowed).
        """
        request = _calls.matching_request(
            providers=providers,
            statuses=statuses,
            created_after=created_after,
            created_before=created_before,
            metadata=metadata,
            batches=batches,
            validate_only=validate_only,
            max_batches=max_batches,
            wait=wait,
            deadline_seconds=deadline_seconds,
            notify_url=notify_url,
        )
        budget = _calls.budget(self._settings, timeout)
        return operation_from_proto(self._unary(self._cancel_matching, request, budget))

    def get_operation(self, name: str, *, timeout: float | None = None) -> Operation:
        """The operation as it stands (`operations/<id>`, or the bare id); a done one with its
        batches (`result`). `NotFound` for an operation that does not exist or that the caller may
        not see (only admin and the virtual key that started it may)."""
        request = operations_pb.GetOperationRequest(name=_calls.operation_name(name))
        return operation_from_proto(self._unary(self._get_operation, request, _calls.budget(self._settings, timeout)))

    def list_operations_page(
        self, *, page_size: int | None = None, page_token: str | None = None, timeout: float | None = None
    ) -> OperationsPage:
        """One page of the caller's operations (admin: everyone's), newest first, without their
        batches; `next_page_token` ("" on the last page) asks for the next. `page_size` (None: the
        service's default, 50) is at most 1,000."""
        request = _calls.list_request(page_size, page_token)
        return operations_page_from_proto(
            self._unary(self._list_operations, request, _calls.budget(self._settings, timeout))
        )

    def list_operations(
        self, *, page_size: int | None = None, timeout: float | None = None
    ) -> Generator[Operation, None, None]:
        """Every operation the caller may see, newest first, without their batches (a `for` loop);
        one ListOperations call per page (`page_size` each, `timeout` each), made as the iteration
        reaches it."""
        return self._pages(_calls.list_request(page_size, None), _calls.budget(self._settings, timeout))

    def wait_operation(self, name: str, timeout: float | None = None) -> Operation:
        """Waits until the operation is done, or `timeout` seconds passed (None: until done), and
        returns it as it then stands (check `done`). WaitOperation calls of at most 60 s each, so
        no call outlives a proxy's timeout; a done operation answers at once. Use a short
        `timeout` in a loop to show progress."""
        waiting = _calls.Waiting(name, timeout, self._hooks.clock)
        while True:
            request, wait = waiting.next_call()
            answer = self._unary(self._wait_operation, request, self._settings.timeout + wait)
            operation = operation_from_proto(answer)
            if operation.done or waiting.over():
                return operation

    def cancel_operation(self, name: str, *, timeout: float | None = None) -> None:
        """Stops the operation: once this returns no new cancel call starts; batches not yet
        cancelled end as `skipped` and the operation ends with an error of code 1 (CANCELLED). A
        done operation is left as it is."""
        request = operations_pb.CancelOperationRequest(name=_calls.operation_name(name))
        self._unary(self._cancel_operation, request, _calls.budget(self._settings, timeout))

    def delete_operation(self, name: str, *, timeout: float | None = None) -> None:
        """Forgets a done operation and its batches. `Conflict` while it still runs (cancel it
        first, or wait)."""
        request = operations_pb.DeleteOperationRequest(name=_calls.operation_name(name))
        self._unary(self._delete_operation, request, _calls.budget(self._settings, timeout))

    def _pages(self, request: operations_pb.ListOperationsRequest, budget: float) -> Generator[Operation, None, None]:
        while True:
            page = operations_page_from_proto(self._unary(self._list_operations, request, budget))
            yield from page.operations
            if not page.next_page_token:
                return
            request = operations_pb.ListOperationsRequest(page_size=request.page_size, page_token=page.next_page_token)

    def _unary(self, method: grpc.UnaryUnaryMultiCallable[Any, _T], request: Any, budget: float) -> _T:
        self._check_open()
        attempts = self._attempts(budget)
        while True:
            try:
                return method(request, timeout=attempts.remaining(), metadata=attempts.metadata)
            except grpc.RpcError as err:
                error = from_rpc_error(err, attempts.request_id)
                pause = attempts.pause_after(error)
                if pause is None:
                    raise error from err
            except ValueError as err:  # grpc's "Cannot invoke RPC on closed channel!"
                self._check_open()
                raise err
            self._hooks.sleep(pause)
            self._check_open()

    def _events(
        self, requests: list[tuple[int, pb.CancelManyRequest]], budget: float, ok_if_ended: bool
    ) -> Generator[CancelEvent, None, None]:
        for offset, request in requests:
            self._check_open()
            attempts = self._attempts(budget)
            while True:
                call = self._cancel_many(request, timeout=attempts.remaining(), metadata=attempts.metadata)
                received = False
                try:
                    request_id = attempts.request_id
                    for message in call:
                        if not received:
                            received = True
                            request_id = _calls.answered_request_id(call.initial_metadata()) or request_id
                        yield event_from_proto(message, request_id=request_id, offset=offset, ok_if_ended=ok_if_ended)
                    break
                except grpc.RpcError as err:
                    self._check_open()
                    error = from_rpc_error(err, attempts.request_id)
                    pause = None if received else attempts.pause_after(error)
                    if pause is None:
                        raise error from err
                finally:
                    call.cancel()  # no-op once the stream ended; stops the server's work otherwise
                self._hooks.sleep(pause)
                self._check_open()


class AsyncBatchgateClient(_ClientBase):
    """asyncio client: the methods, arguments and results of `BatchgateClient`, as coroutines
    (`cancel_many` returns an async stream).

        async with AsyncBatchgateClient("127.0.0.1:50051", vk=os.environ["BATCHGATE_VK"]) as client:
            batch = await client.cancel("batch_abc123", "openai")

    Arguments as for `BatchgateClient` (target; keyword-only vk, timeout, tls, tls_ca, retry,
    metadata), checked here with TypeError / ValueError. Create it inside the event loop that uses
    it; use it with `async with`, or `await close()`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        vk: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        tls: bool | None = None,
        tls_ca: CaFile | None = None,
        retry: RetryPolicy | None = None,
        metadata: MetadataLike = (),
        **_deprecated: Unpack[_DeprecatedHooks],
    ) -> None:
        super().__init__(
            target,
            vk=vk,
            timeout=timeout,
            tls=tls,
            tls_ca=tls_ca,
            retry=retry,
            metadata=metadata,
            sleep=asyncio.sleep,
            deprecated=_deprecated,
        )
        credentials = self._settings.credentials
        self._channel = (
            grpc.aio.secure_channel(target, credentials)
            if credentials is not None
            else grpc.aio.insecure_channel(target)
        )
        self._cancel = self._channel.unary_unary(
            _calls.CANCEL_METHOD,
            request_serializer=pb.CancelBatchRequest.SerializeToString,
            response_deserializer=pb.BatchCancelResponse.FromString,
        )
        self._cancel_many = self._channel.unary_stream(
            _calls.CANCEL_MANY_METHOD,
            request_serializer=pb.CancelManyRequest.SerializeToString,
            response_deserializer=pb.CancelManyEvent.FromString,
        )
        self._health = self._channel.unary_unary(
            _calls.HEALTH_METHOD,
            request_serializer=pb.HealthRequest.SerializeToString,
            response_deserializer=pb.HealthResponse.FromString,
        )
        self._cancel_matching = self._channel.unary_unary(
            _calls.CANCEL_MATCHING_METHOD,
            request_serializer=pb.CancelMatchingRequest.SerializeToString,
            response_deserializer=operations_pb.Operation.FromString,
        )
        self._get_operation = self._channel.unary_unary(
            _calls.GET_OPERATION_METHOD,
            request_serializer=operations_pb.GetOperationRequest.SerializeToString,
            response_deserializer=operations_pb.Operation.FromString,
        )
        self._list_operations = self._channel.unary_unary(
            _calls.LIST_OPERATIONS_METHOD,
            request_serializer=operations_pb.ListOperationsRequest.SerializeToString,
            response_deserializer=operations_pb.ListOperationsResponse.FromString,
        )
        self._wait_operation = self._channel.unary_unary(
            _calls.WAIT_OPERATION_METHOD,
            request_serializer=operations_pb.WaitOperationRequest.SerializeToString,
            response_deserializer=operations_pb.Operation.FromString,
        )
        self._cancel_operation = self._channel.unary_unary(
            _calls.CANCEL_OPERATION_METHOD,
            request_serializer=operations_pb.CancelOperationRequest.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )
        self._delete_operation = self._channel.unary_unary(
            _calls.DELETE_OPERATION_METHOD,
            request_serializer=operations_pb.DeleteOperationRequest.SerializeToString,
            response_deserializer=empty_pb2.Empty.FromString,
        )

    async def __aenter__(self) -> AsyncBatchgateClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Closes the channel; calls in flight are cancelled and later calls raise `ClientClosed`.
        Closing twice is harmless."""
        self._closed = True
        await self._channel.close()

    async def cancel(
        self,
        batch_id: str,
        provider: str,
        *,
        wait_seconds: int = 0,
        timeout: float | None = None,
        ok_if_ended: bool = False,
    ) -> Batch:
        """Cancels one batch and returns its state after the call.

        `wait_seconds` (0-3,600): keep reading the batch back until it is terminal or the time ran
        out (then `warning` says so). `timeout` replaces the client's for this call. With
        `ok_if_ended`, a batch that had already ended (batchgate's 409) is returned as a `Batch` with
        `status` "ended" and `already_ended` true instead of raising `Conflict`.
        Raises a `BatchgateError` subclass (`NotFound`, `Conflict`, `PermissionDenied`, ...).
        """
        request = _calls.cancel_request(batch_id, provider, wait_seconds)
        try:
            answer = await self._unary(self._cancel, request, _calls.budget(self._settings, timeout, wait_seconds))
        except BatchgateError as error:
            return _calls.settle(error, ok_if_ended, batch_id, provider)
        return batch_from_proto(answer)

    async def health(self, *, timeout: float | None = None) -> Health:
        """The service's status (`ok`), each provider's circuit, the rate-limit store and the config
        each worker runs. A draining service raises `Unavailable` with code `draining`."""
        budget = _calls.budget(self._settings, timeout)
        return health_from_proto(await self._unary(self._health, pb.HealthRequest(), budget))

    def cancel_many(
        self,
        items: Iterable[ItemLike],
        *,
        wait_seconds: int = 0,
        timeout: float | None = None,
        ok_if_ended: bool = False,
    ) -> AsyncCancelStream:
        """Cancels many batches and yields each item's events as they happen (`CancelEvent`); not a
        coroutine: `async for event in client.cancel_many(...)`.

        `items` are `BatchRef`s, (id, provider) pairs or {"id", "provider"} mappings, checked now;
        the calls are lazy: nothing is sent until the stream is iterated. A list over 1,000 items
        goes as consecutive calls of 1,000; `index` is always the position in `items`. Each call
        has its own deadline (`timeout` plus `wait_seconds`) and is retried only before its first
        event. An item's failure is its event's `error`; a call that fails as a whole raises from
        the iteration. `ok_if_ended` as for `cancel`. `async with client.cancel_many(...) as
        events:` (or `contextlib.aclosing`) cancels the call in flight when leaving early.
        """
        requests = _calls.many_requests(items, wait_seconds)
        budget = _calls.budget(self._settings, timeout, wait_seconds)
        return AsyncCancelStream(self._events(requests, budget, ok_if_ended))

    async def cancel_matching(
        self,
        *,
        providers: Iterable[str] | None = None,
        statuses: Iterable[SelectorStatus] | None = None,
        created_after: TimeLike | None = None,
        created_before: TimeLike | None = None,
        metadata: Mapping[str, str] | None = None,
        batches: Iterable[ItemLike] | None = None,
        validate_only: bool = False,
        max_batches: int | None = None,
        wait: bool = False,
        deadline_seconds: int | None = None,
        notify_url: str | None = None,
        timeout: float | None = None,
    ) -> Operation:
        """Starts cancelling every batch that matches (a kill switch) and returns the long-running
        `Operation` at once (`operations/<id>`, state `listing`); follow it with `wait_operation`
        or `get_operation`.

        The selector: `providers` (None: every provider the caller may use that can list batches),
        `statuses` (None: validating, in_progress, finalizing), `created_after` (inclusive) and
        `created_before` (exclusive) as timezone-aware datetimes or unix seconds, `metadata` pairs
        that must all equal the batch's own; or exactly the named `batches` (BatchRefs, (id,
        provider) pairs or mappings, up to 1,000; then leave the filters out).
        `validate_only`: a dry run, the result lists every match (outcome `matched`) and nothing is
        cancelled. `max_batches` (None: 100; up to 100,000): more matches and the operation ends
        with an `error` (code 9, `Conflict`) having cancelled nothing. `wait`: done only once every
        cancelled batch reads a terminal status. `deadline_seconds` (None: 3,600; up to 86,400): how
        long the service keeps retrying. `notify_url`: a webhook batchgate POSTs the finished
        operation to (its config must allow the URL). `timeout` replaces the client's for this call.

        Needs the gateway's admin credentials or a virtual key with `allow_cancel_matching`
        (`PermissionDenied` otherwise; explicit `batches` need only the normal cancel permission).
        Raises TypeError / ValueError for bad arguments before sending, `InvalidRequest` for what
        the service refuses (an unknown provider, a notify URL not allowed).
        """
        request = _calls.matching_request(
            providers=providers,
            statuses=statuses,
            created_after=created_after,
            created_before=created_before,
            metadata=metadata,
            batches=batches,
            validate_only=validate_only,
            max_batches=max_batches,
            wait=wait,
            deadline_seconds=deadline_seconds,
            notify_url=notify_url,
        )
        budget = _calls.budget(self._settings, timeout)
        return operation_from_proto(await self._unary(self._cancel_matching, request, budget))

    async def get_operation(self, name: str, *, timeout: float | None = None) -> Operation:
        """The operation as it stands (`operations/<id>`, or the bare id); a done one with its
        batches (`result`). `NotFound` for an operation that does not exist or that the caller may
        not see (only admin and the virtual key that started it may)."""
        request = operations_pb.GetOperationRequest(name=_calls.operation_name(name))
        return operation_from_proto(
            await self._unary(self._get_operation, request, _calls.budget(self._settings, timeout))
        )

    async def list_operations_page(
        self, *, page_size: int | None = None, page_token: str | None = None, timeout: float | None = None
    ) -> OperationsPage:
        """One page of the caller's operations (admin: everyone's), newest first, without their
        batches; `next_page_token` ("" on the last page) asks for the next. `page_size` (None: the
        service's default, 50) is at most 1,000."""
        request = _calls.list_request(page_size, page_token)
        return operations_page_from_proto(
            await self._unary(self._list_operations, request, _calls.budget(self._settings, timeout))
        )

    def list_operations(
        self, *, page_size: int | None = None, timeout: float | None = None
    ) -> AsyncGenerator[Operation, None]:
        """Every operation the caller may see, newest first, without their batches (`async for`);
        one ListOperations call per page (`page_size` each, `timeout` each), made as the iteration
        reaches it."""
        return self._pages(_calls.list_request(page_size, None), _calls.budget(self._settings, timeout))

    async def wait_operation(self, name: str, timeout: float | None = None) -> Operation:
        """Waits until the operation is done, or `timeout` seconds passed (None: until done), and
        returns it as it then stands (check `done`). WaitOperation calls of at most 60 s each, so
        no call outlives a proxy's timeout; a done operation answers at once. Use a short
        `timeout` in a loop to show progress."""
        waiting = _calls.Waiting(name, timeout, self._hooks.clock)
        while True:
            request, wait = waiting.next_call()
            answer = await self._unary(self._wait_operation, request, self._settings.timeout + wait)
            operation = operation_from_proto(answer)
            if operation.done or waiting.over():
                return operation

    async def cancel_operation(self, name: str, *, timeout: float | None = None) -> None:
        """Stops the operation: once this returns no new cancel call starts; batches not yet
        cancelled end as `skipped` and the operation ends with an error of code 1 (CANCELLED). A
        done operation is left as it is."""
        request = operations_pb.CancelOperationRequest(name=_calls.operation_name(name))
        await self._unary(self._cancel_operation, request, _calls.budget(self._settings, timeout))

    async def delete_operation(self, name: str, *, timeout: float | None = None) -> None:
        """Forgets a done operation and its batches. `Conflict` while it still runs (cancel it
        first, or wait)."""
        request = operations_pb.DeleteOperationRequest(name=_calls.operation_name(name))
        await self._unary(self._delete_operation, request, _calls.budget(self._settings, timeout))

    async def _pages(
        self, request: operations_pb.ListOperationsRequest, budget: float
    ) -> AsyncGenerator[Operation, None]:
        while True:
            page = operations_page_from_proto(await self._unary(self._list_operations, request, budget))
            for operation in page.operations:
                yield operation
            if not page.next_page_token:
                return
            request = operations_pb.ListOperationsRequest(page_size=request.page_size, page_token=page.next_page_token)

    async def _unary(self, method: grpc.aio.UnaryUnaryMultiCallable[Any, _T], request: Any, budget: float) -> _T:
        self._check_open()
        attempts = self._attempts(budget)
        while True:
            try:
                return await method(request, timeout=attempts.remaining(), metadata=attempts.metadata)
            except grpc.RpcError as err:
                self._check_open()
                error = from_rpc_error(err, attempts.request_id)
                pause = attempts.pause_after(error)
                if pause is None:
                    raise error from err
            except grpc.aio.UsageError as err:  # the channel was closed under the call
                self._check_open()
                raise err
            await self._hooks.sleep(pause)
            self._check_open()

    async def _events(
        self, requests: list[tuple[int, pb.CancelManyRequest]], budget: float, ok_if_ended: bool
    ) -> AsyncGenerator[CancelEvent, None]:
        for offset, request in requests:
            self._check_open()
            attempts = self._attempts(budget)
            while True:
                call = self._cancel_many(request, timeout=attempts.remaining(), metadata=attempts.metadata)
                received = False
                try:
                    request_id = attempts.request_id
                    async for message in call:
                        if not received:
                            received = True
                            request_id = _calls.answered_request_id(await call.initial_metadata()) or request_id
                        yield event_from_proto(message, request_id=request_id, offset=offset, ok_if_ended=ok_if_ended)
                    break
                except grpc.RpcError as err:
                    self._check_open()
                    error = from_rpc_error(err, attempts.request_id)
                    pause = None if received else attempts.pause_after(error)
                    if pause is None:
                        raise error from err
                finally:
                    call.cancel()
                await self._hooks.sleep(pause)
                self._check_open()
