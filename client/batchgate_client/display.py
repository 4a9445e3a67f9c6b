"""How `batchgate cancel` shows its items: a live progress bar and a summary table on a terminal
(rich), one plain line per item otherwise, or one JSON object per item (`--output json`).

Every view gets each event of the stream and decides what to show; a `Tally` keeps each item's
latest state, so the progress counts, the summary and the exit code agree.

Batch ids, provider names and messages come from a file or from a provider: none of them is ever
read as rich markup (they go in as `Text`), and control characters (ESC, BEL, bidi overrides...)
are shown as escapes (`visible`), so a hostile id can neither break the output nor drive the
terminal.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from batchgate_client.models import TERMINAL_STATUSES, CancelEvent

# The summary lists at most this many failed items (the count is always complete).
MAX_LISTED_FAILURES = 20
ALREADY_ENDED = "already ended"

STATUS_STYLES = {
    "cancelled": "green",
    "cancelling": "yellow",
    "error": "red",
    "completed": "cyan",
    "failed": "red",
    "expired": "magenta",
    "ended": "cyan",
    ALREADY_ENDED: "green",
}

# C0 controls, DEL, C1 controls, the bidi embeddings/overrides/isolates and marks, and lone
# surrogates (undecodable input kept by Python as \udcXX).
_INVISIBLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def visible(value: str) -> str:
    """`value` with every control character written as an escape (`\\x1b`, `\\u202e`), so that
    printing it shows it instead of acting on the terminal."""
    return _INVISIBLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), value)


def count(n: int, singular: str, plural: str | None = None) -> str:
    """`1 item`, `2 items`."""
    return f"{n} {singular if n == 1 else plural or singular + 's'}"


def label(event: CancelEvent) -> str:
    """What an item's state is called in the output: its status (the provider's word when it is
    not a unified one), `already ended`, or `error`."""
    if event.batch is None:
        return "error"
    if event.batch.already_ended:
        return ALREADY_ENDED
    return visible(event.batch.raw.status or event.batch.status)


class Tally:
    """Each item's latest event, and which items failed: an error, or (when waiting) a batch that
    was still not terminal when the wait ran out. A batch that had already ended is what the user
    wanted: not a failure."""

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
        return Counter(label(event) for event in self.latest.values())

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
    """`ID PROVIDER STATUS [detail]`: the plain line of one item, control characters escaped."""
    where = f"{visible(event.id)} {visible(event.provider)}"
    if event.error is not None:
        err = event.error
        return f"{where} error {err.status_code} {visible(err.label)}: {visible(err.message)}"
    batch = event.batch
    if batch is not None and batch.already_ended:
        return f"{where} {ALREADY_ENDED} ({visible(batch.warning or '').removeprefix('already ended: ')})"
    line = f"{where} {label(event)}"
    if batch is not None and batch.warning is not None:
        line += f" (warning: {visible(batch.warning)})"
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
        print(summary_line(self.tally), file=self.err, flush=True)


class JsonView(PlainView):
    """One JSON object per item (the REST stream's final line for it); the summary on stderr. JSON
    escapes control characters itself."""

    def event(self, event: CancelEvent) -> None:
        self.tally.add(event)
        if event.final:
            print(json.dumps(event.to_dict(), separators=(",", ":")), file=self.out, flush=True)


def summary_line(tally: Tally) -> str:
    failures = tally.failures()
    line = f"{count(tally.total, 'item')} in {tally.elapsed():.1f}s: {tally.counts_text() or 'none done'}"
    if failures:
        listed = ", ".join(f"{visible(e.id)} ({reason(e)})" for e in failures[:MAX_LISTED_FAILURES])
        more = f" and {len(failures) - MAX_LISTED_FAILURES} more" if len(failures) > MAX_LISTED_FAILURES else ""
        line += f"; {len(failures)} failed: {listed}{more}"
    if tally.missing():
        line += f"; {tally.missing()} without a result"
    return line


def reason(event: CancelEvent) -> str:
    if event.error is not None:
        return f"{event.error.status_code} {visible(event.error.label)}"
    return f"still {label(event)}"


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
        title = f"{count(tally.total, 'batch', 'batches')} in {tally.elapsed():.1f}s"
        table = Table(title=Text(title), title_justify="left")
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
        failed = Table(title=Text(f"{len(failures)} failed"), title_justify="left", title_style="bold red")
        for column in ("#", "id", "provider", "reason"):
            failed.add_column(column, overflow="fold")
        for e in failures[:MAX_LISTED_FAILURES]:
            why = f"{reason(e)}: {visible(e.error.message)}" if e.error is not None else reason(e)
            failed.add_row(str(e.index), Text(visible(e.id)), Text(visible(e.provider)), Text(why))
        if len(failures) > MAX_LISTED_FAILURES:
            failed.caption = f"and {len(failures) - MAX_LISTED_FAILURES} more"
        self.console.print(failed)
