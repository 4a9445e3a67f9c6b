"""`batchgate stop` (cancel everything that matches, as a long-running operation) and `batchgate
operations list | get | wait | cancel | delete`.

`stop` never cancels batches nobody has seen: with `--dry-run` it lists what matches and cancels
nothing; without `--yes` on a terminal it runs that dry run first, shows the matches and asks; without
`--yes` anywhere else it refuses (exit 2). Then it follows the operation (a live bar on a terminal,
plain lines otherwise) until it is done; Ctrl-C stops following, never the operation, and says how
to follow or cancel it; `--detach` prints the operation's name at once.

Exit codes as for every subcommand: 0 nothing failed, 1 some batches failed (or the operation was
stopped), 2 refused (more matches than --max, permission denied, bad input, the operator said no,
batchgate unreachable), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any, TextIO

from rich.console import Console
from rich.text import Text

from batchgate_client._calls import MAX_BATCHES_LIMIT, MAX_DEADLINE_SECONDS, MAX_PAGE_SIZE
from batchgate_client._cli_common import PROG, Exit, UsageError, make_client
from batchgate_client.client import BatchgateClient
from batchgate_client.display import count, visible
from batchgate_client.errors import BatchgateError
from batchgate_client.models import Operation
from batchgate_client.operations_view import (
    NoProgress,
    OperationProgress,
    PlainProgress,
    batch_line,
    batches_table,
    describe,
    operation_line,
    operations_table,
    show_done,
    show_matches,
)
from batchgate_client.selection import SelectionError, parse_metadata, parse_statuses, parse_time

# How long one WaitOperation call of the follow loop waits: the progress shows a change within it,
# and a done operation answers at once.
FOLLOW_STEP_SECONDS = 1.0
# google.rpc codes of an operation that refused as a whole before cancelling anything: INVALID_ARGUMENT,
# PERMISSION_DENIED, FAILED_PRECONDITION (more matches than max_batches).
REFUSAL_CODES = frozenset({3, 7, 9})

STOP_HELP = (
    "Cancel every batch that matches, as a long-running operation batchgate keeps at until each is "
    "cancelled (across restarts). Filters combine (all must hold); --provider, --status and --metadata "
    "repeat. Without --yes on a terminal it first shows the matches (a dry run) and asks; elsewhere it "
    "refuses without --yes. More matches than --max (default 100) and nothing is cancelled."
)


def _positive(limit: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
        if not 1 <= number <= limit:
            raise argparse.ArgumentTypeError(f"must be between 1 and {limit:,}")
        return number

    return parse


def add_parsers(
    commands: Any,  # argparse's _SubParsersAction, whose type argparse does not export
    common_options: Callable[[argparse.ArgumentParser], None],
    epilog: str,
) -> None:
    """The `stop` and `operations` subcommands; `common_options` adds --target, --vk, ... to each."""
    stop_parser = commands.add_parser(
        "stop", help="cancel every batch that matches (a kill switch)", description=STOP_HELP, epilog=epilog
    )
    selector = stop_parser.add_argument_group("which batches")
    selector.add_argument(
        "--provider", "-p", action="append", default=[], metavar="NAME", help="only this provider (repeat for more)"
    )
    selector.add_argument(
        "--status",
        action="append",
        default=[],
        metavar="STATUS",
        help="only batches in this status (repeat; default: validating, in_progress, finalizing)",
    )
    selector.add_argument(
        "--created-after",
        metavar="WHEN",
        help="created at or after WHEN: RFC 3339 (2025-06-01T12:00:00Z) or an age (2h, 30m, 7d: that long ago)",
    )
    selector.add_argument("--created-before", metavar="WHEN", help="created before WHEN (same forms)")
    selector.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only batches whose own metadata (labels on Vertex) has this pair (repeat: all must match)",
    )
    run = stop_parser.add_argument_group("how")
    run.add_argument(
        "--max",
        type=_positive(MAX_BATCHES_LIMIT),
        metavar="N",
        help="refuse, cancelling nothing, when more than N batches match (default 100)",
    )
    run.add_argument("--dry-run", action="store_true", help="show what matches; cancel nothing")
    run.add_argument("--yes", "-y", action="store_true", help="cancel without asking (needed when not on a terminal)")
    run.add_argument("--wait", action="store_true", help="done only once every cancelled batch reads a terminal status")
    run.add_argument(
        "--detach", action="store_true", help="print the operation's name and exit 0 instead of following it"
    )
    run.add_argument(
        "--deadline",
        type=_positive(MAX_DEADLINE_SECONDS),
        metavar="SECONDS",
        help="how long batchgate keeps retrying (default 3600)",
    )
    run.add_argument("--notify-url", metavar="URL", help="webhook called when the operation is done")
    common_options(stop_parser)

    ops = commands.add_parser("operations", help="list, show, follow, cancel or delete operations")
    common_options(ops)
    actions = ops.add_subparsers(dest="operations_command", required=True, metavar="ACTION", parser_class=type(ops))
    listing = actions.add_parser(
        "list", help="the operations you may see, newest first", epilog=epilog, description="One call per page."
    )
    listing.add_argument(
        "--page-size", type=_positive(MAX_PAGE_SIZE), metavar="N", help="operations per call (default 50)"
    )
    common_options(listing)
    for name, text in (
        ("get", "an operation's state and, once done, its batches"),
        ("wait", "follow an operation until it is done (Ctrl-C stops following, not the operation)"),
        ("cancel", "stop an operation: no new cancel starts, batches not yet cancelled end as skipped"),
        ("delete", "forget a done operation"),
    ):
        action = actions.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".", epilog=epilog)
        action.add_argument("name", metavar="NAME", help="operations/<id> (or the id alone)")
        common_options(action)


def operation_exit(operation: Operation) -> Exit:
    """The exit code an operation's outcome means: 0 nothing failed (or still running), 1 some
    batches failed or the operation was stopped, 2 it refused as a whole (cap, permission, input)."""
    if not operation.done:
        return Exit.OK
    if operation.error is not None:
        return Exit.REFUSED if operation.error.code in REFUSAL_CODES else Exit.FAILED
    return Exit.FAILED if operation.metadata.failed or operation.metadata.skipped else Exit.OK


def _print_json(body: dict[str, Any], out: TextIO) -> None:
    print(json.dumps(body, separators=(",", ":")), file=out, flush=True)


def _selection(args: argparse.Namespace, now: float) -> dict[str, Any]:
    """`cancel_matching`'s selector and settings from the options; times are fixed once, so a dry
    run and the real run select the same span."""
    try:
        after = parse_time(args.created_after, now, "--created-after") if args.created_after else None
        before = parse_time(args.created_before, now, "--created-before") if args.created_before else None
        metadata = parse_metadata(args.metadata)
        statuses = parse_statuses(args.status)
    except SelectionError as exc:
        raise UsageError(str(exc)) from None
    if after is not None and before is not None and after >= before:
        raise UsageError("--created-after must be earlier than --created-before")
    providers = [p.strip().lower() for p in args.provider]
    if any(not p for p in providers):
        raise UsageError("--provider must name a provider")
    return {
        "providers": providers or None,
        "statuses": statuses or None,
        "created_after": after,
        "created_before": before,
        "metadata": metadata or None,
        "max_batches": args.max,
        "deadline_seconds": args.deadline,
        "notify_url": args.notify_url,
    }


def _start(client: BatchgateClient, selection: dict[str, Any], *, validate_only: bool, wait: bool) -> Operation:
    try:
        return client.cancel_matching(**selection, validate_only=validate_only, wait=wait)
    except (TypeError, ValueError) as exc:  # what the library checks before sending
        raise UsageError(str(exc)) from None


class Following:
    """Follows an operation until it is done: a WaitOperation of at most FOLLOW_STEP_SECONDS at a
    time, each answer shown by `view`."""

    def __init__(self, client: BatchgateClient, view: OperationProgress | PlainProgress) -> None:
        self.client, self.view = client, view

    def until_done(self, operation: Operation) -> Operation:
        with self.view:
            self.view.update(operation)
            while not operation.done:
                operation = self.client.wait_operation(operation.name, FOLLOW_STEP_SECONDS)
                self.view.update(operation)
        return operation


def _view(console: Console, output: str, err: TextIO, verb: str) -> OperationProgress | PlainProgress:
    if output == "json":
        return NoProgress(err)
    return OperationProgress(console, verb) if console.is_terminal else PlainProgress(err)


def _still_running(name: str, err: TextIO, what: str) -> None:
    shown = visible(name)
    print(
        f"{PROG}: {what}; {shown} continues in batchgate. Follow it: {PROG} operations wait {shown}; "
        f"stop it: {PROG} operations cancel {shown}",
        file=err,
        flush=True,
    )


def _confirm(operation: Operation, max_batches: int | None, console: Console, stdin: TextIO) -> bool:
    cap = max_batches or 100
    console.print(
        Text(f"The real run lists again: a batch started since this dry run is cancelled too (at most {cap:,} in all).")
    )
    console.print(Text(f"Cancel {count(operation.metadata.matched, 'batch', 'batches')}? [y/N] "), end="")
    return stdin.readline().strip().lower() in ("y", "yes")


def _refusal(operation: Operation, err: TextIO) -> None:
    if operation.error is not None:
        print(f"{PROG}: {visible(operation.name)}: {visible(operation.error.message)}", file=err, flush=True)


def stop(
    args: argparse.Namespace,
    stdin: TextIO,
    stdout: TextIO,
    stderr: TextIO,
    clock: Callable[[], float] = time.time,
) -> int:
    selection = _selection(args, clock())
    console = Console(file=stdout, highlight=False)
    as_json = args.output == "json"
    ask = not args.yes and not args.dry_run
    if ask and as_json:
        raise UsageError("--output json cannot ask before cancelling: add --yes (or look first with --dry-run)")
    if ask and not (stdin.isatty() and console.is_terminal):
        raise UsageError(
            "refusing to cancel batches nobody has seen: this is not a terminal, so there is no one to ask. "
            f"Look with `{PROG} stop ... --dry-run`, then run it with --yes"
        )
    with make_client(args, stdin) as client:
        if args.dry_run or ask:
            preview = _start(client, selection, validate_only=True, wait=False)
            if args.detach and args.dry_run:
                return _detached(preview, as_json, stdout)
            try:
                preview = Following(client, _view(console, args.output, stderr, "listing")).until_done(preview)
            except KeyboardInterrupt:
                print(f"{PROG}: interrupted; nothing was cancelled", file=stderr, flush=True)
                return Exit.INTERRUPTED
            if as_json:
                _print_json(preview.to_dict(), stdout)
            elif preview.error is None:
                show_matches(preview, console, stdout, stderr)
            if preview.error is not None:
                _refusal(preview, stderr)
                return operation_exit(preview)
            if args.dry_run:
                return Exit.OK
            if preview.metadata.matched == 0:
                console.print("Nothing matches: nothing to cancel.")
                return Exit.OK
            try:
                confirmed = _confirm(preview, args.max, console, stdin)
            except KeyboardInterrupt:
                console.print()
                print(f"{PROG}: interrupted; nothing was cancelled", file=stderr, flush=True)
                return Exit.INTERRUPTED
            if not confirmed:
                print(f"{PROG}: nothing was cancelled", file=stderr, flush=True)
                return Exit.REFUSED
        operation = _start(client, selection, validate_only=False, wait=args.wait)
        if args.detach:
            return _detached(operation, as_json, stdout)
        return _follow_and_report(client, operation, console, args.output, stdout, stderr)


def _detached(operation: Operation, as_json: bool, out: TextIO) -> int:
    if as_json:
        _print_json(operation.to_dict(), out)
    else:
        print(visible(operation.name), file=out, flush=True)
    return Exit.OK


def _follow_and_report(
    client: BatchgateClient, operation: Operation, console: Console, output: str, stdout: TextIO, stderr: TextIO
) -> int:
    verb = "cancelling" if not operation.metadata.validate_only else "listing"
    try:
        operation = Following(client, _view(console, output, stderr, verb)).until_done(operation)
    except KeyboardInterrupt:
        _still_running(operation.name, stderr, "stopped following")
        return Exit.INTERRUPTED
    except BatchgateError:
        _still_running(operation.name, stderr, "lost track of the operation")
        raise
    if output == "json":
        _print_json(operation.to_dict(), stdout)
    elif operation.metadata.validate_only:
        show_matches(operation, console, stdout, stderr)
    else:
        show_done(operation, console, stdout, stderr)
    if operation.error is not None and output == "json":
        _refusal(operation, stderr)
    return operation_exit(operation)


def operations(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    console = Console(file=stdout, highlight=False)
    as_json = args.output == "json"
    action = args.operations_command
    with make_client(args, stdin) as client:
        if action == "list":
            found = list(client.list_operations(page_size=args.page_size))
            if as_json:
                for operation in found:
                    _print_json(operation.to_dict(), stdout)
            elif console.is_terminal:
                console.print(operations_table(found))
            else:
                for operation in found:
                    print(operation_line(operation), file=stdout, flush=True)
            return Exit.OK
        if action == "get":
            operation = client.get_operation(args.name)
            if as_json:
                _print_json(operation.to_dict(), stdout)
            else:
                _show_operation(operation, console, stdout)
            return operation_exit(operation)
        if action == "wait":
            return _follow_and_report(client, client.get_operation(args.name), console, args.output, stdout, stderr)
        if action == "cancel":
            client.cancel_operation(args.name)
            operation = client.get_operation(args.name)
            if as_json:
                _print_json(operation.to_dict(), stdout)
            elif operation.done and operation.error is None:
                print(f"{visible(operation.name)} was already done: nothing to stop", file=stdout, flush=True)
            else:
                print(
                    f"{visible(operation.name)}: stopped; no new cancel starts, batches not yet cancelled end as "
                    "skipped",
                    file=stdout,
                    flush=True,
                )
            return Exit.OK
        client.delete_operation(args.name)
        if as_json:
            _print_json({}, stdout)
        else:
            print(f"{visible(args.name)} deleted", file=stdout, flush=True)
        return Exit.OK


def _show_operation(operation: Operation, console: Console, out: TextIO) -> None:
    for line in describe(operation):
        console.print(Text(line)) if console.is_terminal else print(line, file=out, flush=True)
    batches = operation.result.batches if operation.result is not None else ()
    if not batches:
        return
    if console.is_terminal:
        console.print(batches_table(batches, count(len(batches), "batch", "batches")))
    else:
        for batch in batches:
            print(batch_line(batch), file=out, flush=True)
