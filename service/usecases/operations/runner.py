"""Runs one CancelMatching operation while this worker holds its lease, from wherever it stands.

The phases follow `Operation.state`, each a module of its own:

* `listing` (finding): the batches the operation touches; more than `max_batches` ends it with
  FAILED_PRECONDITION and nothing cancelled; a dry run (`validate_only`) ends with every match
  `matched`.
* `cancelling` (cancelling): each batch cancelled through the single cancel's path.
* `waiting` (waiting, with `wait`): the accepted batches read back until terminal.
* `done`: the response is every batch, or the operation's error; then its webhook (delivery).

Stopped by CancelOperation, it ends with CANCELLED (batches not yet cancelled are `skipped`); a
creator's virtual key that was revoked, deactivated or expired stops it the same way, with
UNAUTHENTICATED. After a crash another worker takes over from the stored state: a listing starts
again (nothing was cancelled yet), cancelling goes on with the batches not settled (a batch marked
`cancel_sent` without an outcome had its answer lost: it is the only kind sent again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from service.domain.operations import (
    CANCELLING,
    DONE,
    LISTING,
    MATCHED,
    NOTIFY_PENDING,
    PENDING,
    SKIPPED,
    WAITING,
    BatchItem,
    Failure,
    Notification,
    Operation,
)
from service.infra.observability import OPERATION_BATCHES, OPERATIONS_FINISHED
from service.infra.operation_store import LeaseLost
from service.usecases.operations.cancelling import cancel_batches
from service.usecases.operations.control import Control, Leaving, Stopped
from service.usecases.operations.delivery import deliver_webhook
from service.usecases.operations.finding import find_batches, over_the_cap
from service.usecases.operations.progress import Progress
from service.usecases.operations.run import Run
from service.usecases.operations.waiting import wait_for_batches
from service.usecases.operations.worker import Worker

log = logging.getLogger(__name__)


def result_label(error: Failure | None) -> str:
    """`batchgate_operations_finished_total`'s result: ok, or the error's gRPC code name."""
    if error is None:
        return "ok"
    return {409: "failed_precondition", 499: "cancelled", 401: "unauthenticated"}.get(error.status_code, "error")


class Runner:
    """Operation `name` run by `worker`. `run()` returns when the operation is done (and its webhook
    delivered or given up), when this worker lost its lease, or after `leave()`; `on_done` hears of
    the operation once it is done."""

    def __init__(self, name: str, worker: Worker, on_done: Callable[[Operation], None] | None = None) -> None:
        self.name, self.worker, self._on_done = name, worker, on_done
        self.operation: Operation | None = None
        self.control = Control(worker.timing)

    def request_stop(self, failure: Failure | None = None) -> None:
        """No new cancel starts; the operation ends with `failure` (default: CANCELLED)."""
        self.control.stop(failure)

    def leave(self) -> None:
        """Graceful shutdown: calls in flight finish, nothing new starts, the state is written."""
        self.control.leave()

    async def run(self) -> None:
        try:
            stored = await self.worker.store.get(self.name)
            if stored is None:
                return
            op = self.operation = stored.operation
            if stored.cancel_requested and not op.done:
                self.request_stop()
            progress = Progress(self.worker, op, await self.worker.store.items(self.name))
            run = Run(self.worker, op, progress, self.control)
            try:
                if not op.done:
                    await self._phases(run)
                if op.done and not self.control.leaving:
                    await deliver_webhook(run)
                if self.control.leaving:
                    await progress.flush()
            finally:
                await progress.close()
        except LeaseLost:
            log.info("operation %s: lease lost; another worker runs it now", self.name)

    async def _phases(self, run: Run) -> None:
        op = run.operation
        try:
            run.control.check()
            if op.state == LISTING and not await self._listing(run):
                return
            if op.state == CANCELLING:
                await cancel_batches(run)
                op.state = WAITING if op.command.wait else DONE
                if op.state == WAITING:
                    run.log()
            if op.state == WAITING:
                await wait_for_batches(run)
            await self._finish(run, None)
        except Stopped as stop:
            for item in run.progress.items:
                if item.outcome == PENDING:
                    run.progress.set_outcome(item, SKIPPED)
                    run.audit(item)
            await self._finish(run, stop.failure, with_batches=True)
        except Leaving:
            return

    async def _listing(self, run: Run) -> bool:
        """The listing phase; whether the operation goes on to cancel (not: it ended here)."""
        op, progress = run.operation, run.progress
        found = await find_batches(run)
        failure = found if isinstance(found, Failure) else over_the_cap(op, found)
        if failure is not None:
            progress.replace([])
            if isinstance(found, list):
                op.counts.matched = len(found)
            await self._finish(run, failure, replace_items=True)
            return False
        assert isinstance(found, list)
        if op.command.validate_only:
            _all_matched(found)
            progress.replace(found)
            await self._finish(run, None, replace_items=True)
            return False
        progress.replace(found)
        op.state = CANCELLING
        run.log()
        await progress.flush(replace_items=True)
        return True

    async def _finish(
        self, run: Run, error: Failure | None, *, with_batches: bool = False, replace_items: bool = False
    ) -> None:
        op, now = run.operation, run.worker.now()
        op.state, op.done, op.error, op.error_has_batches = DONE, True, error, with_batches and error is not None
        if op.command.notify_url:
            until = now + run.worker.policy.webhook_for_s
            op.notification = Notification(op.command.notify_url, NOTIFY_PENDING, 0, now, until)
        await run.progress.flush(replace_items=replace_items)
        OPERATIONS_FINISHED.labels(result_label(error)).inc()
        run.log(error=error.message if error is not None else None)
        if self._on_done is not None:
            self._on_done(op)


def _all_matched(found: list[BatchItem]) -> None:
    """A dry run's batches: every one `matched`, none cancelled."""
    for item in found:
        item.outcome, item.settled = MATCHED, True
    OPERATION_BATCHES.labels(MATCHED).inc(len(found))
