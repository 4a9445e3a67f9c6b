"""The operations use case: start a CancelMatching operation, and the google.longrunning.Operations
calls on it (get, list, cancel, delete, wait).

An operation is visible only to the gateway's admin and to the caller that started it (its virtual
key, or `anonymous` on an open gateway); to anyone else it does not exist (404), exactly like a
missing one. Visibility is decided on the name the call carries, whatever path it came through.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
from dataclasses import dataclass

from service.domain.errors import FailedPrecondition, InvalidRequest, NotFound, Overloaded
from service.domain.operations import LISTING, NAME_PREFIX, BatchItem, CancelMatchingCommand, Counts, Operation
from service.infra.observability import OPERATIONS_STARTED, record_operation
from service.infra.operation_store import MAX_PAGE_SIZE, BadPageToken
from service.usecases.auth import Caller
from service.usecases.context import CallContext
from service.usecases.operations.checks import check_access, check_request, normalized
from service.usecases.operations.runner import Runner
from service.usecases.operations.scheduler import Scheduler
from service.usecases.operations.worker import Worker

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
_NAME = re.compile(r"^operations/[A-Za-z0-9_-]{1,64}$")
# WaitOperation reads a remote operation's state this often at most (a local one wakes it at once).
WAIT_POLL_S = (0.1, 1.0)


@dataclass(slots=True)
class Found:
    """An operation as a caller may see it, with its batches when it is done (its response)."""

    operation: Operation
    items: list[BatchItem] | None = None


class Operations:
    """Long-running operations of this worker (`worker`: the store shared with the other workers and
    replicas, the config current at each step, time and policy)."""

    def __init__(self, worker: Worker) -> None:
        self.worker, self.store, self.runtimes = worker, worker.store, worker.runtimes
        self._done: dict[str, asyncio.Event] = {}
        self.scheduler = Scheduler(worker, self._runner)

    def _runner(self, name: str) -> Runner:
        return Runner(name, self.worker, on_done=self._finished)

    def _finished(self, operation: Operation) -> None:
        event = self._done.pop(operation.name, None)
        if event is not None:
            event.set()

    def start_background(self) -> None:
        """Starts leasing and claiming (call once the event loop runs)."""
        self.scheduler.start()

    def running(self) -> int:
        return self.scheduler.running()

    async def close(self, timeout: float = 10.0) -> None:
        await self.scheduler.shutdown(timeout)

    # --- calls -----------------------------------------------------------------------------------

    def _caller(self, call: CallContext) -> Caller:
        caller = self.runtimes.current.canceller.auth.authenticate(call.headers)
        call.caller = caller.identity
        return caller

    async def start(self, command: CancelMatchingCommand, call: CallContext) -> Operation:
        """Checks and starts a CancelMatching operation; this worker runs it from now on. Raises
        400/401/403/429 before anything is listed."""
        with self.runtimes.current as runtime:
            canceller, config = runtime.canceller, runtime.config
            caller = self._caller(call)
            check_request(command, config, canceller)
            command = normalized(command)
            check_access(caller, command, canceller)
            await canceller.auth.count(caller)
            limit = config.operations.max_running_per_caller
            if await self.store.count_running(caller.identity) >= limit:
                raise Overloaded(
                    f"this caller already runs {limit} operations (operations.max_running_per_caller); "
                    "wait for one to finish or cancel one",
                    code="too_many_operations",
                    headers={"retry-after": "5"},
                )
            lease = config.operations.lease_seconds
        now = self.worker.now()
        name = NAME_PREFIX + secrets.token_urlsafe(16)
        items = [BatchItem(provider, batch_id) for batch_id, provider in command.selector.batches]
        operation = Operation(
            name,
            caller.identity,
            command,
            create_time=now,
            update_time=now,
            state=LISTING,
            counts=Counts.of(items),
            request_id=call.record.request_id if call.record is not None else "",
        )
        await self.store.create(operation, items, self.worker.holder, now + lease)
        OPERATIONS_STARTED.inc()
        record_operation(
            name,
            caller.identity,
            "started",
            operation.counts.to_dict(),
            request_id=operation.request_id,
            validate_only=command.validate_only,
            explicit=command.selector.explicit,
        )
        self.scheduler.adopt(name)
        return operation

    async def _visible(self, name: str, caller: Caller) -> Operation:
        if not name:
            raise InvalidRequest("name is required", param="name")
        stored = await self.store.get(name) if _NAME.match(name) else None
        if stored is None or not _may_see(caller, stored.operation):
            raise NotFound(f"operation not found: {name[:100]}", code="operation_not_found")
        return stored.operation

    async def get(self, name: str, call: CallContext) -> Found:
        caller = self._caller(call)
        operation = await self._visible(name, caller)
        return await self._found(operation)

    async def _found(self, operation: Operation) -> Found:
        items = await self.store.items(operation.name) if operation.done else None
        return Found(operation, items)

    async def list_operations(
        self, name: str, filter: str, page_size: int, page_token: str, call: CallContext
    ) -> tuple[list[Operation], str]:
        """The caller's operations (admin: everyone's), newest first, without their batches."""
        caller = self._caller(call)
        if name not in ("", "operations"):
            raise InvalidRequest("name must be operations (or empty)", param="name")
        if filter:
            raise InvalidRequest("filter is not supported: leave it empty", code="unsupported_filter", param="filter")
        if page_size < 0:
            raise InvalidRequest("page_size must not be negative", param="page_size")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        owner = None if caller.identity == "admin" else caller.identity
        try:
            return await self.store.page(owner, size, page_token)
        except BadPageToken as err:
            raise InvalidRequest(str(err), param="page_token") from None

    async def cancel(self, name: str, call: CallContext) -> None:
        """Stops the operation: once this returns no new cancel call starts (a done one: nothing)."""
        caller = self._caller(call)
        operation = await self._visible(name, caller)
        if operation.done:
            return
        await self.store.request_cancel(name)
        runner = self.scheduler.runner(name)
        if runner is not None:
            runner.request_stop()
        record_operation(name, operation.owner, "cancel requested", operation.counts.to_dict(), by=caller.identity)

    async def delete(self, name: str, call: CallContext) -> None:
        caller = self._caller(call)
        operation = await self._visible(name, caller)
        if not operation.done:
            raise FailedPrecondition(
                "the operation is still running: cancel it (CancelOperation) or wait until it is done",
                code="operation_running",
            )
        await self.store.delete(name)

    async def wait(self, name: str, timeout_s: float | None, call: CallContext) -> Found:
        """The operation once done, or as it stands when `timeout_s` (WaitOperation's timeout) or
        the call's deadline (`call.deadline`) comes (a second before, so the answer still gets out)."""
        caller = self._caller(call)
        operation = await self._visible(name, caller)
        loop = asyncio.get_running_loop()
        now = loop.time()
        ends = [now + timeout_s] if timeout_s is not None else []
        if call.deadline is not None:
            ends.append(max(now, call.deadline - 1.0))
        end = min(ends) if ends else None
        poll = WAIT_POLL_S[0]
        while not operation.done:
            now = loop.time()
            if end is not None and now >= end:
                break
            event = self._done.setdefault(name, asyncio.Event())
            step = poll if end is None else min(poll, end - now)
            try:
                await asyncio.wait_for(event.wait(), step)
            except TimeoutError:
                pass
            poll = min(WAIT_POLL_S[1], poll * 2)
            stored = await self.store.get(name)
            if stored is None:
                raise NotFound(f"operation not found: {name[:100]}", code="operation_not_found")
            operation = stored.operation
        if operation.done:
            self._done.pop(name, None)
        return await self._found(operation)


def _may_see(caller: Caller, operation: Operation) -> bool:
    return caller.identity == "admin" or caller.identity == operation.owner
