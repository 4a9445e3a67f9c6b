"""Runs one CancelMatching operation while this worker holds its lease, from wherever it stands.

Phases (`Operation.state`):

* `listing`: every selected provider is listed under each configured batch key the caller may use
  (each key may be another account); a batch found under two keys is kept under the first. Nothing
  is cancelled before the listing is complete. A listing that fails in a way retrying can fix
  (network, 408, 429, 5xx, open circuit) is started again after a backoff until the deadline; then,
  or on any other error, the operation fails with the provider's error. Explicit batches skip the
  listing. More matches than `max_batches`: the operation ends with FAILED_PRECONDITION and
  nothing is cancelled; a dry run (`validate_only`) ends here with every match `matched`.
* `cancelling`: at most `client.bulk_concurrency` cancel calls in flight, each through the single
  cancel's path (admission, breaker, retries, normalised status) with the key its batch was found
  under (explicit batches: the single cancel's key failover). A batch already terminal is
  `already_ended` without a call; a 409 (or a provider's 400 about a batch that reads terminal) is
  `already_ended`; a failure retrying can fix is tried again after a backoff with jitter until the
  deadline, and a 429 with Retry-After pauses that provider for this operation; any other 4xx is
  `failed`. Each batch's `cancel_sent` is stored before its call goes out.
* `waiting` (with `wait`): each accepted batch is read back in rounds (the waiting policy: first
  after 1 s, gaps doubling to 30 s) until it reads terminal or the deadline passes.
* `done`: the response is every batch, or the operation's error. Stopped by CancelOperation, it
  ends with CANCELLED (batches not yet cancelled are `skipped`); a creator's virtual key that was
  revoked, deactivated or expired stops it the same way, with UNAUTHENTICATED.

After a crash another worker takes over from the stored state: a listing starts again (nothing was
cancelled yet), cancelling goes on with the batches not settled (a batch marked `cancel_sent`
without an outcome had its answer lost: it is the only kind sent again).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from service.config.file import Config
from service.domain.errors import GatewayError, Unauthenticated
from service.domain.model import TERMINAL_STATUSES, CancelCommand, ListQuery
from service.domain.operations import (
    ALREADY_ENDED,
    CANCELLED,
    CANCELLING,
    DONE,
    FAILED,
    LISTING,
    MATCHED,
    NOTIFY_DELIVERED,
    NOTIFY_FAILED,
    NOTIFY_PENDING,
    PENDING,
    SKIPPED,
    WAITING,
    BatchItem,
    Failure,
    Notification,
    Operation,
)
from service.infra.observability import (
    OPERATION_BATCHES,
    OPERATIONS_FINISHED,
    CallRecord,
    Outcome,
    Subject,
    record_operation,
    record_operation_batch,
)
from service.infra.operation_store import LeaseLost, OperationStore, StopRequested
from service.infra.providers.http import RETRYABLE_STATUSES, retry_after_seconds
from service.usecases.auth import Caller
from service.usecases.cancel import Canceller
from service.usecases.context import CallContext
from service.usecases.listing import list_batches
from service.usecases.operations.checks import check_access, default_statuses, owner_caller
from service.usecases.operations.progress import Progress
from service.usecases.operations.work import WorkQueue
from service.usecases.target import CancelOutcome
from service.usecases.waiting import PollPolicy, sleep_unless

log = logging.getLogger(__name__)

NOTIFY_FOR_SECONDS = 3600.0
CAP_MESSAGE = "matches {matched} batches, more than max_batches {cap}; nothing was cancelled"
STOPPED_MESSAGE = "cancelled: no cancel was started after CancelOperation; batches not yet cancelled are skipped"
ROUTE = "operation"


class Runtime(Protocol):
    """One loaded config and what is built from it (service.runtime.live.Runtime), held while in use."""

    config: Config
    canceller: Canceller

    def __enter__(self) -> Runtime: ...

    def __exit__(self, *exc: object) -> None: ...


class Runtimes(Protocol):
    """Whatever gives the runtime current now (service.runtime.live.LiveConfig)."""

    @property
    def current(self) -> Runtime: ...


class Notifier(Protocol):
    """Sends an operation's webhook (service.infra.webhook.WebhookSender)."""

    async def post(self, url: str, body: bytes, secret: str) -> int: ...

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: `first_s` after the first failure, doubling up to `max_s`,
    each shortened by up to `jitter` at random."""

    first_s: float = 1.0
    max_s: float = 30.0
    jitter: float = 0.2

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.max_s, self.first_s * 2.0 ** max(0, failures - 1))
        return base * (1 - self.jitter * rand())


@dataclass(frozen=True, slots=True)
class Settings:
    """How operations retry, wait and notify (tests make them fast)."""

    retry: Backoff = Backoff()
    listing_retry: Backoff = Backoff(first_s=2.0, max_s=60.0)
    notify_retry: Backoff = Backoff(first_s=1.0, max_s=300.0)
    poll: PollPolicy = PollPolicy()
    notify_for_s: float = NOTIFY_FOR_SECONDS
    flush_items: int = 100
    flush_seconds: float = 0.1


class _Stop(Exception):
    """The operation stops here: CancelOperation, or its creator's key was revoked."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


class _Leave(Exception):
    """This worker shuts down: it leaves the operation as it stands for another to resume."""


def cancelled_failure() -> Failure:
    return Failure(STOPPED_MESSAGE, status_code=499, type="cancelled", code="operation_cancelled")


def result_label(error: Failure | None) -> str:
    """`batchgate_operations_finished_total`'s result: ok, or the error's gRPC code name."""
    if error is None:
        return "ok"
    return {409: "failed_precondition", 499: "cancelled", 401: "unauthenticated"}.get(error.status_code, "error")


def _retryable(error: GatewayError) -> bool:
    return error.status_code in RETRYABLE_STATUSES


class Runner:
    """One operation run by this worker (`holder`). `run()` returns when the operation is done (and
    its webhook delivered or given up), when this worker lost its lease, or after `leave()`."""

    def __init__(
        self,
        name: str,
        store: OperationStore,
        runtimes: Runtimes,
        holder: str,
        *,
        clock: Callable[[], float],
        settings: Settings,
        render: Callable[[Operation, list[BatchItem]], bytes] | None = None,
        notifier: Notifier | None = None,
        on_done: Callable[[Operation], None] | None = None,
    ) -> None:
        self.name, self.store, self.runtimes, self.holder = name, store, runtimes, holder
        self.clock, self.settings, self.render, self.notifier = clock, settings, render, notifier
        self._on_done = on_done
        self.operation: Operation | None = None
        self.progress: Progress | None = None
        self._stop: Failure | None = None
        self._leaving = False
        self._wake = asyncio.Event()  # set on a stop or a leave: sleeps end early
        self._queue: WorkQueue[BatchItem] | None = None

    # --- control from outside (the scheduler, CancelOperation) -----------------------------------

    def request_stop(self, failure: Failure | None = None) -> None:
        """No new cancel starts; the operation ends with `failure` (default: CANCELLED)."""
        if self._stop is None:
            self._stop = failure or cancelled_failure()
        self._halt()

    def leave(self) -> None:
        """Graceful shutdown: calls in flight finish, nothing new starts, the state is written."""
        self._leaving = True
        self._halt()

    def _halt(self) -> None:
        self._wake.set()
        if self._queue is not None:
            self._queue.close()

    def _check(self) -> None:
        if self._leaving:
            raise _Leave()
        if self._stop is not None:
            raise _Stop(self._stop)

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            stored = await self.store.get(self.name)
            if stored is None:
                return
            op = self.operation = stored.operation
            if stored.cancel_requested and not op.done:
                self.request_stop()
            items = await self.store.items(self.name)
            progress = self.progress = Progress(
                self.store,
                self.holder,
                op,
                items,
                self.clock,
                flush_items=self.settings.flush_items,
                flush_seconds=self.settings.flush_seconds,
            )
            try:
                if not op.done:
                    await self._run(op, progress)
                if op.done and not self._leaving:
                    await self._notify(op, progress)
                if self._leaving:
                    await progress.flush()
            finally:
                await progress.close()
        except LeaseLost:
            log.info("operation %s: lease lost; another worker runs it now", self.name)

    async def _run(self, op: Operation, progress: Progress) -> None:
        try:
            self._check()
            if op.state == LISTING:
                found = await self._find(op)
                if found is None:
                    return  # refused or failed: finished already
                if op.command.validate_only:
                    for item in found:
                        item.outcome, item.settled = MATCHED, True
                    OPERATION_BATCHES.labels(MATCHED).inc(len(found))
                    progress.replace(found)
                    await self._finish(op, progress, None, replace_items=True)
                    return
                progress.replace(found)
                op.state = CANCELLING
                self._log(op)
                await progress.flush(replace_items=True)
            if op.state == CANCELLING:
                await self._cancel_all(op, progress)
                op.state = WAITING if op.command.wait else DONE
                if op.state == WAITING:
                    self._log(op)
            if op.state == WAITING:
                await self._wait_all(op, progress)
            await self._finish(op, progress, None)
        except _Stop as stop:
            for item in progress.items:
                if item.outcome == PENDING:
                    progress.set_outcome(item, SKIPPED)
                    self._audit(op, item)
            await self._finish(op, progress, stop.failure, with_batches=True)
        except _Leave:
            return

    # --- listing ---------------------------------------------------------------------------------

    def _caller(self, op: Operation, config: Config) -> Caller:
        """The caller the operation runs as under `config`; a revoked key stops it."""
        try:
            return owner_caller(op.owner, config, self.clock)
        except Unauthenticated as err:
            failure = Failure.of(err)
            self.request_stop(failure)
            raise _Stop(failure) from None

    async def _find(self, op: Operation) -> list[BatchItem] | None:
        """The batches the operation touches (a listing, or the named ones); None when it ended here
        (more than max_batches, a listing that failed)."""
        selector = op.command.selector
        if selector.explicit:
            found = list(self.progress.items) if self.progress is not None else []
            if not found:
                found = [BatchItem(provider, batch_id) for batch_id, provider in selector.batches]
        else:
            listed = await self._list(op)
            if listed is None:
                return None
            found = listed
        if len(found) > op.command.max_batches:
            failure = Failure(
                CAP_MESSAGE.format(matched=len(found), cap=op.command.max_batches),
                status_code=409,
                type="invalid_request_error",
                code="too_many_matches",
            )
            assert self.progress is not None
            self.progress.replace([])
            op.counts.matched = len(found)
            await self._finish(op, self.progress, failure, replace_items=True)
            return None
        return found

    async def _list(self, op: Operation) -> list[BatchItem] | None:
        selector = op.command.selector
        query = ListQuery(
            statuses=default_statuses(op.command),
            created_after=selector.created_after,
            created_before=selector.created_before,
            metadata=dict(selector.metadata),
        )
        found: dict[tuple[str, str], BatchItem] = {}
        with self.runtimes.current as runtime:
            caller = self._caller(op, runtime.config)
            try:
                providers = check_access(caller, op.command, runtime.canceller)
            except GatewayError as err:
                await self._fail(op, err)
                return None
        for provider in providers:
            with self.runtimes.current as runtime:
                canceller = runtime.canceller
                caller = self._caller(op, runtime.config)
                try:
                    resolved = canceller.provider(provider)
                    keys = canceller.batch_keys(caller, provider)
                except GatewayError as err:
                    await self._fail(op, err)
                    return None
                for key in keys:
                    failures = 0
                    while True:
                        self._check()
                        deadline = asyncio.get_running_loop().time() + max(0.0, op.deadline - self.clock())
                        call = CallContext(record=CallRecord(op.request_id, ROUTE), deadline=deadline)
                        try:
                            listing = list_batches(resolved.adapter, resolved.executor, key, query, call)
                            async for listed in listing:
                                self._check()
                                found.setdefault(
                                    (provider, listed.state.id),
                                    BatchItem(provider, listed.state.id, key_id=key.id, state=listed.state),
                                )
                            break
                        except GatewayError as err:
                            failures += 1
                            delay = self.settings.listing_retry.delay(failures)
                            if not _retryable(err) or self.clock() + delay >= op.deadline:
                                await self._fail(op, err)
                                return None
                            log.warning(
                                "operation %s: listing %s failed (%s); again in %.1f s",
                                op.name,
                                provider,
                                err.message,
                                delay,
                            )
                            await sleep_unless(self._wake, delay)
        return list(found.values())

    async def _fail(self, op: Operation, error: GatewayError) -> None:
        """Ends the operation with `error` (a listing that failed, a provider no longer usable)."""
        assert self.progress is not None
        self.progress.replace([])
        await self._finish(op, self.progress, Failure.of(error), replace_items=True)

    # --- cancelling ------------------------------------------------------------------------------

    async def _cancel_all(self, op: Operation, progress: Progress) -> None:
        pending = []
        for item in progress.items:
            if item.outcome != PENDING:
                continue
            if item.state is not None and item.state.status in TERMINAL_STATUSES and not item.cancel_sent:
                item.settled = True
                progress.set_outcome(item, ALREADY_ENDED)
                self._audit(op, item)
                continue
            pending.append(item)
        if not pending:
            return
        self._check()
        queue = self._queue = WorkQueue((item.provider, item) for item in pending)
        with self.runtimes.current as runtime:
            concurrency = runtime.config.client.bulk_concurrency
        try:
            async with asyncio.TaskGroup() as group:
                for _ in range(min(concurrency, len(pending))):
                    group.create_task(self._worker(op, progress, queue))
        except* LeaseLost as lost:
            raise lost.exceptions[0] from None
        self._queue = None
        self._check()

    async def _worker(self, op: Operation, progress: Progress, queue: WorkQueue[BatchItem]) -> None:
        while True:
            taken = await queue.take()
            if taken is None:
                return
            provider, item = taken
            if self._stop is not None or self._leaving:
                queue.done()
                queue.close()
                return
            delay = await self._attempt(op, progress, queue, item)
            if delay is None:
                queue.done()
            else:
                queue.retry(provider, item, delay)

    async def _attempt(
        self, op: Operation, progress: Progress, queue: WorkQueue[BatchItem], item: BatchItem
    ) -> float | None:
        """One cancel of `item`; the seconds until it is tried again, or None once settled (or
        stopped)."""
        remaining = op.deadline - self.clock()
        if remaining <= 0:
            self._settle_failed(op, progress, item, None)
            return None
        loop = asyncio.get_running_loop()
        call_end = loop.time() + remaining
        command = CancelCommand(batch_id=item.batch_id, provider=item.provider)
        context = CallContext(record=CallRecord(op.request_id, ROUTE), caller=op.owner, deadline=call_end)
        with self.runtimes.current as runtime:
            canceller = runtime.canceller
            try:
                caller = self._caller(op, runtime.config)
            except _Stop:
                return None
            try:
                target = canceller.scoped_target(caller, item.provider, item.batch_id, item.key_id or None)
                try:
                    await progress.mark_sent(item)
                except StopRequested:
                    self.request_stop()
                    return None
                outcome = await canceller.cancel_target(target, command, context)
            except LeaseLost:
                raise
            except GatewayError as err:
                return await self._failed_attempt(op, progress, queue, item, err, canceller, caller, call_end)
            except Exception as exc:  # noqa: BLE001 - the store failed (or a bug): tried again later
                log.warning("operation %s: %s/%s: %s", op.name, item.provider, item.batch_id, type(exc).__name__)
                failures = max(1, item.attempts)
                return self.settings.retry.delay(failures)
        self._settle(op, progress, item, outcome)
        return None

    def _settle(self, op: Operation, progress: Progress, item: BatchItem, outcome: CancelOutcome) -> None:
        result = outcome.result
        state = result.batch
        item.state, item.latency_ms, item.warning, item.error = state, result.latency_ms, result.warning, None
        item.key_id = outcome.read_back.key.id  # the key whose account holds the batch
        ended = state.status in TERMINAL_STATUSES and state.status != "cancelled"
        item.settled = state.status in TERMINAL_STATUSES
        progress.set_outcome(item, ALREADY_ENDED if ended else CANCELLED)
        self._audit(op, item)

    def _settle_failed(self, op: Operation, progress: Progress, item: BatchItem, error: GatewayError | None) -> None:
        if error is not None:
            item.error = Failure.of(error)
        elif item.error is None:
            item.error = Failure(
                "the operation's deadline passed before the batch could be cancelled",
                status_code=504,
                type="timeout_error",
                code="deadline_exceeded",
                provider=item.provider,
            )
        item.settled = True
        progress.set_outcome(item, FAILED)
        self._audit(op, item)

    async def _failed_attempt(
        self,
        op: Operation,
        progress: Progress,
        queue: WorkQueue[BatchItem],
        item: BatchItem,
        error: GatewayError,
        canceller: Canceller,
        caller: Caller,
        call_end: float,
    ) -> float | None:
        if error.status_code == 409:  # the batch already finished (every adapter answers a finished batch so)
            item.error, item.warning, item.settled = None, error.message, True
            progress.set_outcome(item, ALREADY_ENDED)
            self._audit(op, item)
            return None
        if error.status_code == 400 and not error.is_bifrost_error:
            # Some providers say "already ended" with a 400: a read tells.
            state = await self._read(canceller, caller, item, call_end, op.request_id)
            if state is not None and state.status in TERMINAL_STATUSES:
                item.state, item.error, item.warning, item.settled = state, None, error.message, True
                progress.set_outcome(item, ALREADY_ENDED)
                self._audit(op, item)
                return None
        if not _retryable(error):
            self._settle_failed(op, progress, item, error)
            return None
        retry_after = retry_after_seconds(error.headers.get("retry-after"))
        if error.status_code == 429 and retry_after:
            queue.pause(item.provider, retry_after)
        delay = max(self.settings.retry.delay(max(1, item.attempts)), retry_after or 0.0)
        item.error = Failure.of(error)
        if self.clock() + delay >= op.deadline:
            self._settle_failed(op, progress, item, error)
            return None
        progress.changed(item)
        return delay

    async def _read(
        self, canceller: Canceller, caller: Caller, item: BatchItem, call_end: float, request_id: str
    ) -> Any:
        """The batch's state read back with its key (None when the read fails)."""
        try:
            target = canceller.scoped_target(caller, item.provider, item.batch_id, item.key_id or None)
            context = CallContext(record=CallRecord(request_id, ROUTE), deadline=call_end)
            state, _ = await canceller.read(target.with_key(target.key), item.batch_id, context)
        except GatewayError:
            return None
        return state

    # --- waiting ---------------------------------------------------------------------------------

    async def _wait_all(self, op: Operation, progress: Progress) -> None:
        policy = self.settings.poll
        delay = policy.first_s
        while True:
            waiting = [
                item
                for item in progress.items
                if item.outcome == CANCELLED and not item.settled and item.state is not None
            ]
            remaining = op.deadline - self.clock()
            if not waiting or remaining <= 0:
                break
            await sleep_unless(self._wake, min(delay, remaining))
            self._check()
            await self._read_round(op, progress, waiting)
            delay = policy.next_delay(delay)
        for item in progress.items:
            if item.outcome == CANCELLED and not item.settled and item.state is not None:
                item.warning = f"the batch is still {item.state.status} after waiting"
                progress.changed(item)

    async def _read_round(self, op: Operation, progress: Progress, waiting: list[BatchItem]) -> None:
        """Reads every batch of `waiting` once, `client.bulk_concurrency` at a time."""
        with self.runtimes.current as runtime:
            caller = self._caller(op, runtime.config)
            canceller = runtime.canceller
            call_end = asyncio.get_running_loop().time() + max(0.0, op.deadline - self.clock())
            pending = iter(waiting)

            async def reader() -> None:
                for item in pending:
                    if self._leaving or self._stop is not None:
                        return
                    await self._read_one(op, progress, canceller, caller, item, call_end)

            concurrency = runtime.config.client.bulk_concurrency
            await asyncio.gather(*(reader() for _ in range(min(concurrency, len(waiting)))))

    async def _read_one(
        self,
        op: Operation,
        progress: Progress,
        canceller: Canceller,
        caller: Caller,
        item: BatchItem,
        call_end: float,
    ) -> None:
        try:
            target = canceller.scoped_target(caller, item.provider, item.batch_id, item.key_id or None)
            context = CallContext(record=CallRecord(op.request_id, ROUTE), caller=op.owner, deadline=call_end)
            state, _ = await canceller.read(target.with_key(target.key), item.batch_id, context)
        except GatewayError as err:
            if not _retryable(err):
                item.warning, item.settled = f"reading the batch failed: {err.message}", True
                progress.changed(item)
            return
        assert item.state is not None
        if state.status != item.state.status or state.status in TERMINAL_STATUSES:
            item.state = state
            item.settled = state.status in TERMINAL_STATUSES
            item.warning = None
            progress.changed(item)

    # --- the end ---------------------------------------------------------------------------------

    async def _finish(
        self,
        op: Operation,
        progress: Progress,
        error: Failure | None,
        *,
        with_batches: bool = False,
        replace_items: bool = False,
    ) -> None:
        now = self.clock()
        op.state, op.done, op.error, op.error_has_batches = DONE, True, error, with_batches and error is not None
        if op.command.notify_url:
            until = now + self.settings.notify_for_s
            op.notification = Notification(op.command.notify_url, NOTIFY_PENDING, 0, now, until)
        await progress.flush(replace_items=replace_items)
        OPERATIONS_FINISHED.labels(result_label(error)).inc()
        self._log(op, error=error.message if error is not None else None)
        if self._on_done is not None:
            self._on_done(op)

    def _audit(self, op: Operation, item: BatchItem) -> None:
        if op.command.validate_only:
            return
        if item.error is not None and item.outcome == FAILED:
            status = item.error.status_code
        else:
            status = 200
        code = {CANCELLED: "OK", ALREADY_ENDED: "OK", SKIPPED: "SKIPPED"}.get(item.outcome, "FAILED")
        record_operation_batch(
            CallRecord(op.request_id, ROUTE),
            op.owner,
            Subject(item.provider, item.batch_id, operation=op.name),
            item.outcome,
            Outcome(code, status, warning=item.warning),
        )

    def _log(self, op: Operation, **fields: Any) -> None:
        record_operation(op.name, op.owner, op.state, op.counts.to_dict(), **fields)

    # --- the webhook -----------------------------------------------------------------------------

    async def _notify(self, op: Operation, progress: Progress) -> None:
        notification = op.notification
        while notification.state == NOTIFY_PENDING and not self._leaving:
            now = self.clock()
            if now >= notification.until or self.render is None or self.notifier is None:
                notification.state = NOTIFY_FAILED
                notification.last_error = notification.last_error or "gave up"
                log.error("operation %s: webhook not delivered: %s", op.name, notification.last_error)
                progress.operation_changed()
                await progress.flush()
                return
            if notification.next_at > now:
                await sleep_unless(self._wake, notification.next_at - now)
                continue
            with self.runtimes.current as runtime:
                secret = runtime.config.operations.notify_secret
            items = progress.items or await self.store.items(op.name)
            status, problem = None, ""
            if not secret:
                problem = "no operations.notify_secret is configured"
            else:
                try:
                    status = await self.notifier.post(notification.url, self.render(op, items), secret)
                except (OSError, TimeoutError) as exc:
                    problem = f"no answer ({type(exc).__name__})"
                except Exception as exc:  # noqa: BLE001 - aiohttp's errors, or a bug: tried again
                    problem = f"no answer ({type(exc).__name__})"
            notification.attempts += 1
            if status is not None and 200 <= status < 300:
                notification.state, notification.last_error = NOTIFY_DELIVERED, ""
                log.info("operation %s: webhook delivered (HTTP %d)", op.name, status)
            elif status is not None and status < 500:
                notification.state, notification.last_error = NOTIFY_FAILED, f"HTTP {status}"
                log.error("operation %s: webhook refused with HTTP %d; not retried", op.name, status)
            else:
                notification.last_error = problem or f"HTTP {status}"
                notification.next_at = self.clock() + self.settings.notify_retry.delay(notification.attempts)
                log.warning(
                    "operation %s: webhook failed (%s); again in %.0f s",
                    op.name,
                    notification.last_error,
                    notification.next_at - self.clock(),
                )
            progress.operation_changed()
            await progress.flush()
