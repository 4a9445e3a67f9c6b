"""One operation being run by this worker: what its phases (finding, cancelling, waiting, delivery)
work on and report to."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from service.config.file import Config
from service.domain.errors import Unauthenticated
from service.domain.model import BatchState
from service.domain.operations import ALREADY_ENDED, CANCELLED, FAILED, SKIPPED, BatchItem, Failure, Operation
from service.infra.observability import CallRecord, Outcome, Subject, record_operation, record_operation_batch
from service.usecases.auth import Caller
from service.usecases.cancel import Canceller
from service.usecases.context import CallContext
from service.usecases.operations.checks import owner_caller
from service.usecases.operations.control import Control, Stopped
from service.usecases.operations.progress import Progress
from service.usecases.operations.worker import Worker
from service.usecases.target import Target

# The access log's and the audit events' route of the work an operation does.
ROUTE = "operation"


@dataclass(frozen=True, slots=True)
class Owner:
    """The operation's creator under the config current now: that config, its canceller, and the
    caller the operation runs as."""

    config: Config
    canceller: Canceller
    caller: Caller

    def target(self, item: BatchItem) -> Target:
        """The batch as the creator may cancel it now, with the key it was found under (if any).
        Raises 400/403."""
        return self.canceller.scoped_target(self.caller, item.provider, item.batch_id, item.key_id or None)

    async def read(self, item: BatchItem, call: CallContext) -> BatchState:
        """The batch read back with its key. Raises the provider's error."""
        target = self.target(item)
        state, _ = await self.canceller.read(target.with_key(target.key), item.batch_id, call)
        return state


@dataclass(slots=True)
class Run:
    """`operation` run by `worker`, its batches in `progress`, and whether it goes on (`control`)."""

    worker: Worker
    operation: Operation
    progress: Progress
    control: Control

    @contextmanager
    def owner(self) -> Iterator[Owner]:
        """The config current now, held while in use, and the operation's creator under it. A
        creator's virtual key that was revoked, deactivated or expired stops the run (Stopped)."""
        with self.worker.runtimes.current as runtime:
            try:
                caller = owner_caller(self.operation.owner, runtime.config, self.worker.now)
            except Unauthenticated as err:
                failure = Failure.of(err)
                self.control.stop(failure)
                raise Stopped(failure) from None
            yield Owner(runtime.config, runtime.canceller, caller)

    def remaining(self) -> float:
        """Seconds until the operation gives up (negative once it has)."""
        return self.operation.gives_up_at - self.worker.now()

    def call(self) -> CallContext:
        """The context of an upstream call made now: the CancelMatching call's request id, and the
        moment the operation gives up as its deadline."""
        deadline = asyncio.get_running_loop().time() + max(0.0, self.remaining())
        record = CallRecord(self.operation.request_id, ROUTE)
        return CallContext(record=record, caller=self.operation.owner, deadline=deadline)

    def audit(self, item: BatchItem) -> None:
        """The audit event and metric of a batch just settled (none in a dry run)."""
        op = self.operation
        if op.command.validate_only:
            return
        status = item.error.status_code if item.error is not None and item.outcome == FAILED else 200
        code = {CANCELLED: "OK", ALREADY_ENDED: "OK", SKIPPED: "SKIPPED"}.get(item.outcome, "FAILED")
        record_operation_batch(
            CallRecord(op.request_id, ROUTE),
            op.owner,
            Subject(item.provider, item.batch_id, operation=op.name),
            item.outcome,
            Outcome(code, status, warning=item.warning),
        )

    def log(self, **fields: Any) -> None:
        """The log line of a state change."""
        op = self.operation
        record_operation(op.name, op.owner, op.state, op.counts.to_dict(), **fields)
