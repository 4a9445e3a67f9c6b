"""How `batchgate cancel` shows its items: a live progress bar and a summary table on a terminal
(rich), one plain line per item otherwise, or one JSON object per item (`--output json`).

Every view gets each event of the stream and decides what to show; a `Tally` keeps each item's
latest state, so the progress counts, the summary and the exit code agree.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from batchgate_client.client import TERMINAL_STATUSES, CancelEvent

# The summary lists at most this many failed items (the count is always complete).
MAX_LISTED_FAILURES = 20

STATUS_STYLES = {
    "cancelled": "green",
    "cancelling": "yellow",
    "error": "red",
    "completed": "cyan",
    "failed": "red",
    "expired": "magenta",
    "ended": "cyan",
}


class Tally:
    """Each item's latest event, and which items failed: an error, or (when waiting) a batch that
    was still not terminal when the wait ran out."""

    def __init__(self, total: int, waiting: bool, clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.waiting = waiting
        self.latest: dict[int, CancelEvent] = {}
        self.done: set[int] = set()
        self._clock = clock
        self.started = clock()

    def add(self, event: CancelEvent) -> None:
        self.latest[event.index] = event
        if event.final:
            self.done.add(event.index)

    def failed(self, event: CancelEvent) -> bool:
        return not event.ok or (self.waiting and event.final and event.status not in TERMINAL_STATUSES)

    def counts(self) -> Counter[str]:
        return Counter(event.status for event in self.latest.values())

    def failures(self) -> list[CancelEvent]:
        return sorted((e for e in self.latest.values() if e.final and self.failed(e)), key=lambda e: e.index)

    def missing(self) -> int:
        """Items that never had their final event (the call broke off)."""
        return self.total - len(self.done)

    def elapsed(self) -> float:
        return self._clock() - self.started

    def counts_text(self) -> str:
        return ", ".join(f"{n} {status}" for status, n in sorted(self.counts().items()))


def describe(event: CancelEvent) -> str:
    """`ID PROVIDER STATUS [detail]`: the plain line of one item."""
    if event.error is not None:
        err = event.error
        return f"{event.id} {event.provider} error {err.status_code} {err.label}: {err.message}"
    line = f"{event.id} {event.provider} {event.status}"
    if event.batch is not None and event.batch.extra_fields.HasField("warning"):
        line += f" (warning: {event.batch.extra_fields.warning})"
    return line


class PlainView:
    """One line per item as its final event arrives; a one-line summary on stderr."""

    def __init__(self, tally: Tally, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
        self.tally, self.out, self.err = tally, out, err

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def event(self, event: CancelEvent) -> None:
        self.tally.add(event)
        if event.final:
            print(describe(event), file=self.out, flush=True)

    def summary(self) -> None:
        if self.tally.total > 1 or self.tally.failures() or self.tally.missing():
            print(summary_line(self.tally), file=self.err, flush=True)


class JsonView(PlainView):
    """One JSON object per item (the REST stream's final line for it); the summary on stderr."""

    def event(self, event: CancelEvent) -> None:
        self.tally.add(event)
        if event.final:
            print(json.dumps(event.to_dict(), separators=(",", ":")), file=self.out, flush=True)


def summary_line(tally: Tally) -> str:
    failures = tally.failures()
    line = f"{tally.total} items in {tally.elapsed():.1f}s: {tally.counts_text() or 'none done'}"
    if failures:
        listed = ", ".join(f"{e.id} ({_reason(e)})" for e in failures[:MAX_LISTED_FAILURES])
        more = f" and {len(failures) - MAX_LISTED_FAILURES} more" if len(failures) > MAX_LISTED_FAILURES else ""
        line += f"; {len(failures)} failed: {listed}{more}"
    if tally.missing():
        line += f"; {tally.missing()} without a result"
    return line


def _reason(event: CancelEvent) -> str:
    if event.error is not None:
        return f"{event.error.status_code} {event.error.label}"
    return f"still {event.status}"


class ProgressView:
    """A live progress bar (done / total, counts by status, elapsed time) while the events arrive,
    then a summary table: items by status, and each failed item with its reason."""

    def __init__(self, tally: Tally, console: Console) -> None:
        self.tally = tally
        self.console = console
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        verb = "cancelling and waiting" if tally.waiting else "cancelling"
        self.task = self.progress.add_task(verb, total=tally.total, counts="")

    def __enter__(self) -> ProgressView:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def event(self, event: CancelEvent) -> None:
        self.tally.add(event)
        self.progress.update(self.task, completed=len(self.tally.done), counts=self._counts())

    def _counts(self) -> Text:
        text = Text()
        for i, (status, n) in enumerate(sorted(self.tally.counts().items())):
            text.append(", " if i else "")
            text.append(f"{n} {status}", style=STATUS_STYLES.get(status, ""))
        return text

    def summary(self) -> None:
        tally = self.tally
        table = Table(title=f"{tally.total} batches in {tally.elapsed():.1f}s", title_justify="left")
        table.add_column("status")
        table.add_column("items", justify="right")
        for status, n in sorted(tally.counts().items()):
            table.add_row(Text(status, style=STATUS_STYLES.get(status, "")), str(n))
        if tally.missing():
            table.add_row(Text("no result", style="red"), str(tally.missing()))
        self.console.print(table)
        failures = tally.failures()
        if not failures:
            return
        failed = Table(title=f"{len(failures)} failed", title_justify="left", title_style="bold red")
        for column in ("#", "id", "provider", "reason"):
            failed.add_column(column, overflow="fold")
        for e in failures[:MAX_LISTED_FAILURES]:
            reason = f"{_reason(e)}: {e.error.message}" if e.error is not None else _reason(e)
            failed.add_row(str(e.index), e.id, e.provider, reason)
        if len(failures) > MAX_LISTED_FAILURES:
            failed.caption = f"and {len(failures) - MAX_LISTED_FAILURES} more"
        self.console.print(failed)
