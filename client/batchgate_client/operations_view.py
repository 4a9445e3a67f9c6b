"""How `batchgate stop` and `batchgate operations` show operations: the matches of a dry run, the
progress of a running operation (a live bar on a terminal, a plain line per change otherwise), the
batches of a done one and a list of operations; tables on a terminal, plain lines when piped.

As in `display`, every value that comes from a provider, the selector or the service (ids, provider
and key names, metadata, messages) goes in as `Text`, never markup, with its control characters
escaped (`visible`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table
from rich.text import Text

from batchgate_client.display import count, visible
from batchgate_client.models import CancelMatchingMetadata, MatchedBatch, Operation
from batchgate_client.selection import rfc3339

# A terminal shows at most this many batches in a table (the counts are always complete; piped
# output and --output json list every one).
MAX_TABLE_ROWS = 50

OUTCOME_STYLES = {
    "matched": "yellow",
    "cancelled": "green",
    "already_ended": "cyan",
    "failed": "red",
    "skipped": "magenta",
    "pending": "",
}


def selector_text(metadata: CancelMatchingMetadata) -> str:
    """The selector in one line: `providers openai, azure; statuses in_progress; created after
    2025-06-01T10:00:00Z; metadata team=ml` (or the named batches)."""
    selector = metadata.selector
    if selector.batches:
        return f"{count(len(selector.batches), 'named batch', 'named batches')}"
    parts = [
        f"providers {', '.join(selector.providers)}" if selector.providers else "every provider that can list",
        f"statuses {', '.join(selector.statuses)}"
        if selector.statuses
        else "running (validating, in_progress, finalizing)",
    ]
    if selector.created_after is not None:
        parts.append(f"created at or after {rfc3339(selector.created_after)}")
    if selector.created_before is not None:
        parts.append(f"created before {rfc3339(selector.created_before)}")
    if selector.metadata:
        parts.append("metadata " + ", ".join(f"{k}={v}" for k, v in selector.metadata.items()))
    return visible("; ".join(parts))


def counts_text(metadata: CancelMatchingMetadata) -> str:
    """`40 matched: 38 cancel accepted, 2 already ended, 0 failed` (a dry run: `40 matched`)."""
    head = f"{metadata.matched} matched"
    if metadata.validate_only or metadata.state == "listing":
        return head
    parts = [
        f"{metadata.cancel_accepted} cancel accepted",
        f"{metadata.already_ended} already ended",
        f"{metadata.failed} failed",
    ]
    if metadata.skipped:
        parts.append(f"{metadata.skipped} skipped")
    if metadata.pending:
        parts.append(f"{metadata.pending} pending")
    return f"{head}: {', '.join(parts)}"


def progress_line(operation: Operation) -> str:
    """One plain line of a running operation: `operations/abc cancelling: 40 matched: ...`."""
    return f"{visible(operation.name)} {operation.metadata.state}: {counts_text(operation.metadata)}"


def elapsed(operation: Operation) -> int:
    """Seconds from the operation's start to its last update, by the service's clock."""
    return max(0, operation.metadata.update_time - operation.metadata.create_time)


def summary_line(operation: Operation) -> str:
    """`operations/abc done in 3s (dry run): 40 matched`, or `... failed: <why>`."""
    kind = " (dry run)" if operation.metadata.validate_only else ""
    state = "done" if operation.done else operation.metadata.state
    line = f"{visible(operation.name)} {state} in {elapsed(operation)}s{kind}: {counts_text(operation.metadata)}"
    if operation.error is not None:
        line += f"; error {operation.error.code}: {visible(operation.error.message)}"
    return line


def batch_status(batch: MatchedBatch) -> str:
    return visible(batch.batch.raw.status or batch.batch.status) if batch.batch is not None else "-"


def batch_line(batch: MatchedBatch) -> str:
    """`ID PROVIDER OUTCOME STATUS KEY`, then the error when it failed; control characters escaped."""
    line = (
        f"{visible(batch.id)} {visible(batch.provider)} {batch.outcome} {batch_status(batch)} "
        f"{visible(batch.key_id) or '-'}"
    )
    if batch.error is not None:
        line += f" error {batch.error.status_code} {visible(batch.error.label)}: {visible(batch.error.message)}"
    return line


def batches_table(batches: Sequence[MatchedBatch], title: str, *, outcome: bool = True) -> Table:
    """The batches (at most MAX_TABLE_ROWS of them; a caption counts the rest)."""
    table = Table(title=Text(title), title_justify="left")
    columns = ["provider", "id", "key", "status", *(["outcome", "error"] if outcome else [])]
    for column in columns:
        table.add_column(column, overflow="fold")
    for batch in batches[:MAX_TABLE_ROWS]:
        row = [
            Text(visible(batch.provider)),
            Text(visible(batch.id)),
            Text(visible(batch.key_id)),
            Text(batch_status(batch)),
        ]
        if outcome:
            row.append(Text(batch.outcome, style=OUTCOME_STYLES.get(batch.outcome, "")))
            error = batch.error
            row.append(Text(f"{error.status_code} {visible(error.label)}: {visible(error.message)}" if error else ""))
        table.add_row(*row)
    if len(batches) > MAX_TABLE_ROWS:
        table.caption = f"and {len(batches) - MAX_TABLE_ROWS:,} more (--output json, or piped output, lists them all)"
    return table


def by_provider(batches: Iterable[MatchedBatch]) -> str:
    """`openai 12, anthropic 3` (most first)."""
    counts = Counter(batch.provider for batch in batches)
    return ", ".join(f"{visible(name)} {n}" for name, n in counts.most_common())


def show_matches(operation: Operation, console: Console, out: TextIO, err: TextIO) -> None:
    """A dry run's matches: a table and a count by provider on a terminal; one line per match on
    `out` and the summary on `err` otherwise."""
    batches = operation.result.batches if operation.result is not None else ()
    if console.is_terminal:
        if batches:
            console.print(batches_table(batches, f"{count(len(batches), 'batch', 'batches')} match", outcome=False))
        console.print(Text(f"{summary_line(operation)}" + (f" ({by_provider(batches)})" if batches else "")))
        return
    for batch in batches:
        print(batch_line(batch), file=out, flush=True)
    print(summary_line(operation) + (f" ({by_provider(batches)})" if batches else ""), file=err, flush=True)


def show_done(operation: Operation, console: Console, out: TextIO, err: TextIO) -> None:
    """A finished operation: on a terminal, its outcome counts and the batches that did not go as
    asked (failed, skipped); otherwise one line per batch on `out` and the summary on `err`."""
    batches = operation.result.batches if operation.result is not None else ()
    if not console.is_terminal:
        for batch in batches:
            print(batch_line(batch), file=out, flush=True)
        print(summary_line(operation), file=err, flush=True)
        return
    if batches:
        table = Table(title=Text(f"{count(len(batches), 'batch', 'batches')}"), title_justify="left")
        table.add_column("outcome")
        table.add_column("batches", justify="right")
        for outcome, n in sorted(Counter(batch.outcome for batch in batches).items()):
            table.add_row(Text(outcome, style=OUTCOME_STYLES.get(outcome, "")), str(n))
        console.print(table)
        unsettled = [batch for batch in batches if batch.outcome in ("failed", "skipped", "pending")]
        if unsettled:
            console.print(batches_table(unsettled, f"{len(unsettled)} not cancelled"))
    console.print(Text(summary_line(operation), style="red" if operation.error is not None else ""))


def describe(operation: Operation) -> list[str]:
    """What `operations get` prints before the batches: name and state, selector, counts, error."""
    meta = operation.metadata
    kind = "dry run" if meta.validate_only else "cancel"
    state = "done" if operation.done else meta.state
    lines = [
        f"{visible(operation.name)}: {state} ({kind}), created {rfc3339(meta.create_time)} by "
        f"{visible(meta.created_by) or '-'}, updated {rfc3339(meta.update_time)}",
        f"selector: {selector_text(meta)}",
        counts_text(meta),
    ]
    if operation.error is not None:
        lines.append(f"error {operation.error.code}: {visible(operation.error.message)}")
    return lines


COUNT_NAMES = ("matched", "accepted", "already_ended", "failed", "skipped", "pending")


def _counts(meta: CancelMatchingMetadata) -> tuple[int, ...]:
    return (meta.matched, meta.cancel_accepted, meta.already_ended, meta.failed, meta.skipped, meta.pending)


def _result(operation: Operation) -> str:
    if not operation.done:
        return operation.metadata.state
    return "ok" if operation.error is None else f"error {operation.error.code}"


def operations_table(operations: Sequence[Operation]) -> Table:
    """One row per operation: its id (what `get`, `wait` and `cancel` take), when and by whom it was
    started, dry run or not, its non-zero counts, and how it stands (running state, ok, error code)."""
    table = Table(title=Text(count(len(operations), "operation")), title_justify="left")
    for column in ("operation", "created", "by", "kind", "batches", "result"):
        table.add_column(column, no_wrap=column in ("operation", "created"))
    for operation in operations:
        meta = operation.metadata
        counts = ", ".join(
            f"{value} {name.replace('_', ' ')}" for name, value in zip(COUNT_NAMES, _counts(meta), strict=True) if value
        )
        result = _result(operation)
        table.add_row(
            Text(visible(operation.id)),
            Text(rfc3339(meta.create_time)),
            Text(visible(meta.created_by)),
            Text("dry-run" if meta.validate_only else "cancel"),
            Text(counts or "0 matched"),
            Text(result, style="red" if result.startswith("error") else "green" if result == "ok" else ""),
        )
    return table


def operation_line(operation: Operation) -> str:
    """`NAME KIND CREATED BY matched=.. accepted=.. already_ended=.. failed=.. skipped=.. pending=..
    RESULT` (RESULT: the running state, ok, or error CODE)."""
    meta = operation.metadata
    counts = " ".join(f"{name}={value}" for name, value in zip(COUNT_NAMES, _counts(meta), strict=True))
    kind = "dry-run" if meta.validate_only else "cancel"
    by = visible(meta.created_by) or "-"
    return f"{visible(operation.name)} {kind} {rfc3339(meta.create_time)} {by} {counts} {_result(operation)}"


def clock_text(seconds: int) -> str:
    """`0:01:05`."""
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class OperationProgress:
    """A live bar while an operation runs: settled / matched (a pulse while listing), the counts,
    and how long it has run by the service's clock (with `wait`, every batch is settled long before
    the operation is done)."""

    def __init__(self, console: Console, verb: str) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[elapsed]}"),
            console=console,
            transient=False,
        )
        self.task = self.progress.add_task(verb, total=None, counts="", elapsed="")

    def __enter__(self) -> OperationProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def update(self, operation: Operation) -> None:
        meta = operation.metadata
        listing = meta.state == "listing" and not operation.done
        self.progress.update(
            self.task,
            description=meta.state if not operation.done else "done",
            total=None if listing else max(meta.matched, 1),
            completed=meta.settled if not meta.validate_only else meta.matched,
            counts=Text(counts_text(meta)),
            elapsed=clock_text(elapsed(operation)),
        )


class PlainProgress:
    """A plain line on `err` each time a running operation's state or counts change (the summary
    line says how it ended)."""

    def __init__(self, err: TextIO) -> None:
        self.err = err
        self.last = ""

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def update(self, operation: Operation) -> None:
        line = progress_line(operation)
        if line != self.last and not operation.done:
            self.last = line
            print(line, file=self.err, flush=True)


class NoProgress(PlainProgress):
    """`--output json`: nothing until the operation is done."""

    def update(self, operation: Operation) -> None:
        pass
