"""The cancelling phase: every batch not settled yet, cancelled through the single cancel's path.

At most `client.bulk_concurrency` cancel calls are in flight, providers taking turns (WorkQueue).
Each goes through the single cancel's path (admission, breaker, retries, normalised status) with
the key its batch was found under (explicit batches: the single cancel's key failover). A batch
already terminal is `already_ended` without a call; a 409 (or a provider's 400 about a batch that
reads terminal) is `already_ended`; a failure retrying can fix is tried again after a backoff with
jitter until the operation gives up, and a 429 with Retry-After pauses that provider for this
operation; any other 4xx is `failed`. Each batch's `cancel_sent` is stored before its call goes out
(Progress.mark_sent), so after a crash only a batch whose answer was lost is sent again.
"""

from __future__ import annotations

import asyncio
import logging

from service.domain.errors import GatewayError
from service.domain.model import TERMINAL_STATUSES, BatchState, CancelCommand
from service.domain.operations import ALREADY_ENDED, CANCELLED, FAILED, PENDING, BatchItem, Failure
from service.infra.operation_store import LeaseLost, StopRequested
from service.infra.providers.http import RETRYABLE_STATUSES, retry_after_seconds
from service.usecases.operations.control import Stopped
from service.usecases.operations.run import Owner, Run
from service.usecases.operations.work import WorkQueue
from service.usecases.target import CancelOutcome

log = logging.getLogger(__name__)

DEADLINE_PASSED = "the operation's deadline passed before the batch could be cancelled"


async def cancel_batches(run: Run) -> None:
    """Settles every pending batch (or as many as it can before a stop or a leave). Raises Stopped,
    Leaving or LeaseLost."""
    pending = []
    for item in run.progress.items:
        if item.outcome != PENDING:
            continue
        if item.state is not None and item.state.status in TERMINAL_STATUSES and not item.cancel_sent:
            item.settled = True
            _settle(run, item, ALREADY_ENDED)
            continue
        pending.append(item)
    if not pending:
        return
    run.control.check()
    queue = WorkQueue(((item.provider, item) for item in pending), run.worker.timing)
    with run.owner() as owner:
        concurrency = owner.config.client.bulk_concurrency
    with run.control.on_halt(queue.close):
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, len(pending))):
                    group.create_task(_Canceller(run, queue).work())
        except* LeaseLost as lost:
            raise lost.exceptions[0] from None
    run.control.check()


def _settle(run: Run, item: BatchItem, outcome: str) -> None:
    run.progress.set_outcome(item, outcome)
    run.audit(item)


class _Canceller:
    """One of the phase's workers: takes a batch, cancels it once, settles it or puts it back."""

    def __init__(self, run: Run, queue: WorkQueue[BatchItem]) -> None:
        self.run, self.queue = run, queue

    async def work(self) -> None:
        queue = self.queue
        while True:
            taken = await queue.take()
            if taken is None:
                return
            provider, item = taken
            if self.run.control.halted:
                queue.done()
                queue.close()
                return
            delay = await self._attempt(item)
            if delay is None:
                queue.done()
            else:
                queue.retry(provider, item, delay)

    async def _attempt(self, item: BatchItem) -> float | None:
        """One cancel of `item`; the seconds until it is tried again, or None once settled (or
        stopped)."""
        if self.run.remaining() <= 0:
            self._failed(item, None)
            return None
        try:
            with self.run.owner() as owner:
                return await self._cancel(owner, item)
        except Stopped:
            return None

    async def _cancel(self, owner: Owner, item: BatchItem) -> float | None:
        run = self.run
        command = CancelCommand(batch_id=item.batch_id, provider=item.provider)
        try:
            target = owner.target(item)
            await run.progress.mark_sent(item)
            outcome = await owner.canceller.cancel_target(target, command, run.call())
        except StopRequested:  # the mark was refused: this cancel does not go out
            run.control.stop()
            return None
        except LeaseLost:
            raise
        except GatewayError as err:
            return await self._after_error(owner, item, err)
        except Exception as exc:  # noqa: BLE001 - the store failed (or a bug): tried again later
            log.warning("operation %s: %s/%s: %s", run.operation.name, item.provider, item.batch_id, type(exc).__name__)
            return run.worker.policy.retry.delay(max(1, item.attempts), run.worker.timing.rand)
        self._cancelled(item, outcome)
        return None

    def _cancelled(self, item: BatchItem, outcome: CancelOutcome) -> None:
        result = outcome.result
        state = result.batch
        item.state, item.latency_ms, item.warning, item.error = state, result.latency_ms, result.warning, None
        item.key_id = outcome.read_back.key.id  # the key whose account holds the batch
        ended = state.status in TERMINAL_STATUSES and state.status != "cancelled"
        item.settled = state.status in TERMINAL_STATUSES
        _settle(self.run, item, ALREADY_ENDED if ended else CANCELLED)

    def _failed(self, item: BatchItem, error: GatewayError | None) -> None:
        if error is not None:
            item.error = Failure.of(error)
        elif item.error is None:
            item.error = Failure(
                DEADLINE_PASSED, status_code=504, type="timeout_error", code="deadline_exceeded", provider=item.provider
            )
        item.settled = True
        _settle(self.run, item, FAILED)

    def _ended(self, item: BatchItem, warning: str, state: BatchState | None = None) -> None:
        if state is not None:
            item.state = state
        item.error, item.warning, item.settled = None, warning, True
        _settle(self.run, item, ALREADY_ENDED)

    async def _after_error(self, owner: Owner, item: BatchItem, error: GatewayError) -> float | None:
        """What a failed cancel means: settled (already ended, failed), or the seconds until it is
        tried again."""
        if error.status_code == 409:  # the batch already finished (every adapter answers a finished batch so)
            self._ended(item, error.message)
            return None
        if error.status_code == 400 and not error.is_bifrost_error:
            # Some providers say "already ended" with a 400: a read tells.
            state = await self._read(owner, item)
            if state is not None and state.status in TERMINAL_STATUSES:
                self._ended(item, error.message, state)
                return None
        if error.status_code not in RETRYABLE_STATUSES:
            self._failed(item, error)
            return None
        run = self.run
        retry_after = retry_after_seconds(error.headers.get("retry-after"))
        if error.status_code == 429 and retry_after:
            self.queue.pause(item.provider, retry_after)
        delay = max(run.worker.policy.retry.delay(max(1, item.attempts), run.worker.timing.rand), retry_after or 0.0)
        item.error = Failure.of(error)
        if delay >= run.remaining():
            self._failed(item, error)
            return None
        run.progress.changed(item)
        return delay

    async def _read(self, owner: Owner, item: BatchItem) -> BatchState | None:
        """The batch's state read back with its key (None when the read fails)."""
        try:
            return await owner.read(item, self.run.call())
        except GatewayError:
            return None
