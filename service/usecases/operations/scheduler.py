"""Which operations this worker runs: the ones it started, and the ones whose worker died.

Every worker renews the leases it holds every third of `operations.lease_seconds` (15 s) and, as
often, claims operations that some worker must run and whose lease expired (one atomic step in the
store, so two workers never both take one). A worker that finds a lease gone stops working on that
operation at once; one asked (through the store) to cancel an operation tells its runner. So after
every process was killed, a gateway started again on the same store resumes each operation within
a lease and a renewal period (20 s by default). On a graceful shutdown the runners leave (calls in
flight finish, progress is written) and the leases are released, so another worker resumes at once.

Finished operations are kept `operations.retention_days` (30) after their creation: about once an
hour each worker deletes those older (done, their webhook delivered or given up), a few at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from service.config.operations import OperationsConfig
from service.infra.observability import OPERATIONS_RUNNING
from service.usecases.operations.runner import Runner
from service.usecases.operations.worker import Worker

log = logging.getLogger(__name__)

# Operations one worker takes over per round, and at most at once.
CLAIM_PER_ROUND = 10
MAX_RUNNING = 100
WARN_EVERY_S = 60.0
# How often finished operations past their retention are looked for, and how many go per round.
SWEEP_EVERY_S = 3600.0
DELETE_PER_ROUND = 20
DAY_S = 86400.0


class Scheduler:
    """The operations `worker` runs (each by a runner `make_runner` makes), its leases, and the
    retention of finished ones."""

    def __init__(self, worker: Worker, make_runner: Callable[[str], Runner], *, max_running: int = MAX_RUNNING) -> None:
        self.store, self.holder, self._worker, self._make_runner = worker.store, worker.holder, worker, make_runner
        self._clock, self._max_running = worker.now, max_running
        self._next_sweep = float("-inf")
        self._runners: dict[str, tuple[Runner, asyncio.Task[None]]] = {}
        self._stopping = asyncio.Event()
        self._kick = asyncio.Event()
        self._loop: asyncio.Task[None] | None = None
        self._warned_at = float("-inf")

    def start(self) -> None:
        if self._loop is None:
            self._loop = asyncio.get_running_loop().create_task(self._run())

    def runner(self, name: str) -> Runner | None:
        entry = self._runners.get(name)
        return entry[0] if entry is not None else None

    def running(self) -> int:
        """Operations this worker runs now (not those it only delivers a webhook for)."""
        return sum(1 for runner, _ in self._runners.values() if runner.operation is None or not runner.operation.done)

    def adopt(self, name: str) -> Runner:
        """Runs `name`, whose lease this worker holds (it just created it, or claimed it)."""
        existing = self.runner(name)
        if existing is not None:
            return existing
        runner = self._make_runner(name)
        task = asyncio.get_running_loop().create_task(runner.run(), name=f"operation {name}")
        self._runners[name] = (runner, task)
        task.add_done_callback(lambda done: self._ended(name, done))
        self._update_gauge()
        return runner

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        entry = self._runners.get(name)
        if entry is not None and entry[1] is task:
            del self._runners[name]
        self._update_gauge()
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("operation %s: the runner failed; its lease is released for another try", name, exc_info=exc)
            if not self._stopping.is_set():
                asyncio.get_running_loop().create_task(self._release([name]))

    def _update_gauge(self) -> None:
        OPERATIONS_RUNNING.set(self.running())

    async def _release(self, names: list[str]) -> None:
        try:
            await self.store.release(self.holder, names)
        except Exception as exc:  # noqa: BLE001 - the lease then simply expires
            self._warn("releasing leases failed", exc)

    def _warn(self, what: str, exc: BaseException) -> None:
        now = self._clock()
        if now - self._warned_at >= WARN_EVERY_S:
            self._warned_at = now
            log.warning("operations: %s (%s); trying again", what, type(exc).__name__)

    def _operations_config(self) -> OperationsConfig:
        with self._worker.runtimes.current as runtime:
            return runtime.config.operations

    async def _run(self) -> None:
        while not self._stopping.is_set():
            # Cleared before the round, not after it: a kick (a shutdown) that comes while the
            # round waits on the store must end the wait below at once, not a third of a lease later.
            self._kick.clear()
            lease = self._operations_config().lease_seconds
            try:
                await self.tick(lease)
            except Exception as exc:  # noqa: BLE001 - a store that fails now may answer next round
                self._warn("the operation store failed", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), lease / 3)

    async def tick(self, lease: float) -> None:
        """One round: renew what this worker holds, claim what nobody runs, and (once an hour)
        delete finished operations past their retention."""
        now = self._clock()
        names = list(self._runners)
        if names:
            held = await self.store.renew(self.holder, names, now, now + lease)
            for name in names:
                entry = self._runners.get(name)
                if entry is None:
                    continue
                runner, task = entry
                if name not in held:
                    log.warning("operation %s: lease lost; stopping work on it", name)
                    task.cancel()
                elif held[name]:
                    runner.request_stop()
        free = self._max_running - len(self._runners)
        if free > 0 and not self._stopping.is_set():
            for name in await self.store.claim(self.holder, now, now + lease, min(free, CLAIM_PER_ROUND)):
                log.info("operation %s: taken over by this worker", name)
                self.adopt(name)
        if now >= self._next_sweep and not self._stopping.is_set():
            await self._sweep(now)

    async def _sweep(self, now: float) -> None:
        """Deletes finished operations created more than `operations.retention_days` ago (0: none)."""
        days = self._operations_config().retention_days
        if days:
            deleted = await self.store.delete_finished(now - days * DAY_S, DELETE_PER_ROUND)
            if deleted:
                log.info("operations: %d finished operations older than %d days deleted", len(deleted), days)
            if len(deleted) == DELETE_PER_ROUND:
                return  # more may be due: the next round goes on
        self._next_sweep = now + SWEEP_EVERY_S

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stops claiming; every runner leaves (calls in flight finish, progress is written) within
        `timeout`, then the leases are released."""
        self._stopping.set()
        self._kick.set()
        if self._loop is not None:
            await asyncio.gather(self._loop, return_exceptions=True)
        entries = list(self._runners.items())
        for _, (runner, _) in entries:
            runner.leave()
        tasks = [task for _, (_, task) in entries]
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=timeout)
            for task in late:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await self._release([name for name, _ in entries])
        self._update_gauge()

    async def abandon(self) -> None:
        """Stops at once, the way a killed process does: no round runs again and every runner is
        cancelled where it stands; nothing is written, nothing released (its leases run out). What
        tests of a takeover stand a dead worker on; a real crash needs no call."""
        self._stopping.set()
        tasks = [task for _, task in self._runners.values()]
        if self._loop is not None:
            tasks.append(self._loop)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
