"""An operation's progress on its way to the store, written in groups rather than one write per batch.

Settled batches are written together: once 100 are waiting or 100 ms after the first of them
(`OperationPolicy.flush_items`, `flush_seconds`).
Only one thing cannot wait: a batch's `cancel_sent` mark must be stored before its cancel call goes
out (so after a crash only a batch whose answer was lost is ever cancelled twice). Such marks are
written at once, together with whatever else is waiting, and that write also checks that nobody
asked to cancel the operation meanwhile (`StopRequested`): once CancelOperation has returned no new
mark can be written, so no new cancel call can start. A write that finds the lease gone raises
`LeaseLost` to everyone waiting on it, and nothing more is written.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from service.domain.operations import PENDING, BatchItem, Counts, Operation
from service.infra.operation_store import LeaseLost, SaveMode, StopRequested
from service.usecases.operations.worker import Worker


class Progress:
    """The running operation `operation` and its batches `items` (settled ones included), written by
    `worker` under its lease. Counts in the operation's metadata follow every `set_outcome`."""

    def __init__(self, worker: Worker, operation: Operation, items: Iterable[BatchItem]) -> None:
        self.store, self.holder, self.operation, self._clock = worker.store, worker.holder, operation, worker.now
        self.items = list(items)
        operation.counts = Counts.of(self.items, None)
        self._flush_items, self._flush_seconds = worker.policy.flush_items, worker.policy.flush_seconds
        self._dirty: dict[tuple[str, str], BatchItem] = {}
        self._marks: list[asyncio.Future[None]] = []
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._op_dirty = False

    # --- what changed --------------------------------------------------------------------------

    def replace(self, items: list[BatchItem]) -> None:
        """The operation's whole list of batches from now on (a listing finished); the next
        `flush(replace_items=True)` writes it."""
        self.items = items
        self._dirty.clear()
        self.operation.counts = Counts.of(items)

    def changed(self, item: BatchItem) -> None:
        """`item` changed (its state, attempts): written with the next group."""
        self._dirty[item.key] = item
        if len(self._dirty) >= self._flush_items:
            self._wake.set()
        self._start()

    def set_outcome(self, item: BatchItem, outcome: str) -> None:
        counts = self.operation.counts
        _bump(counts, item.outcome, -1)
        _bump(counts, outcome, +1)
        item.outcome = outcome
        self.changed(item)

    def operation_changed(self) -> None:
        self._op_dirty = True
        self._start()

    async def mark_sent(self, item: BatchItem) -> None:
        """Stores `item.cancel_sent` (and what else waits) now; raises StopRequested or LeaseLost."""
        if self._failure is not None:
            raise self._failure
        was_sent = item.cancel_sent
        item.cancel_sent = True
        item.attempts += 1
        self._dirty[item.key] = item
        future = asyncio.get_running_loop().create_future()
        self._marks.append(future)
        self._wake.set()
        self._start()
        try:
            await future
        except BaseException:
            item.cancel_sent, item.attempts = was_sent, item.attempts - 1  # no cancel goes out
            raise

    # --- writing -------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write_loop())

    async def _write_loop(self) -> None:
        while (self._dirty or self._marks or self._op_dirty) and self._failure is None:
            if not self._marks and len(self._dirty) < self._flush_items:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self._flush_seconds)
                except TimeoutError:
                    pass
            await self._write_once()

    async def _write_once(self) -> None:
        batch, marks = self._dirty, self._marks
        self._dirty, self._marks, self._op_dirty = {}, [], False
        self.operation.update_time = self._clock()
        try:
            mode = SaveMode.UNLESS_STOPPED if marks else SaveMode.MERGE
            await self.store.save(self.holder, self._clock(), self.operation, list(batch.values()), mode)
        except StopRequested as exc:
            # The marks' cancels must not go out; what else was written stays to be written.
            for key, item in batch.items():
                self._dirty.setdefault(key, item)
            self._op_dirty = True
            _fail(marks, exc)
            return
        except Exception as exc:  # noqa: BLE001 - the lease is gone, or the store failed: every waiter learns it
            if isinstance(exc, LeaseLost):
                self._failure = exc
            else:
                for key, item in batch.items():
                    self._dirty.setdefault(key, item)
                self._op_dirty = True
            _fail(marks, exc)
            if not isinstance(exc, LeaseLost):
                await asyncio.sleep(self._flush_seconds)  # a failing store is not asked in a loop
            return
        for future in marks:
            if not future.done():
                future.set_result(None)

    async def flush(self, *, replace_items: bool = False) -> None:
        """Writes everything now (at a phase change, at the end) without the stop check; raises
        LeaseLost, or the store's error."""
        if self._failure is not None:
            raise self._failure
        if self._writer is not None and not self._writer.done():
            self._wake.set()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._failure is not None:
            raise self._failure
        items = self.items if replace_items else list(self._dirty.values())
        self._dirty, self._op_dirty = {}, False
        self.operation.update_time = self._clock()
        try:
            mode = SaveMode.REPLACE if replace_items else SaveMode.MERGE
            await self.store.save(self.holder, self._clock(), self.operation, items, mode)
        except LeaseLost as exc:
            self._failure = exc
            raise

    async def close(self) -> None:
        """Stops the writer without writing (the lease is gone, or the task is being cancelled)."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        _fail(self._marks, LeaseLost(self.operation.name))


def _fail(futures: list[asyncio.Future[None]], exc: BaseException) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)


def _bump(counts: Counts, outcome: str, delta: int) -> None:
    name = {
        PENDING: "pending",
        "cancelled": "cancel_accepted",
        "already_ended": "already_ended",
        "failed": "failed",
        "skipped": "skipped",
    }.get(outcome)
    if name is not None:
        setattr(counts, name, getattr(counts, name) + delta)
