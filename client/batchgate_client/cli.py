"""The `batchgate` command (also `python -m batchgate_client`).

    batchgate cancel ID [ID ...] --provider P [--wait SECONDS]
    batchgate cancel --from FILE|- [--wait SECONDS] [--output json]
    batchgate stop [--provider P ...] [--status S ...] [--created-after WHEN] [--metadata K=V ...]
                   [--max N] [--dry-run] [--yes] [--wait] [--detach]
    batchgate operations list | get NAME | wait NAME | cancel NAME | delete NAME
    batchgate config check FILE
    batchgate health

One exit-code rule for every subcommand (`Exit`): 0 nothing failed, 1 some items failed (the
summary names them), 2 nothing was decided item by item: a usage error, unreadable input, batchgate
not reachable (or cut off), or a call refused as a whole (credentials, bounds, more matches than
--max). 130 interrupted. `stop` and `operations` are in `operations_cli`.
Every problem is one line on stderr, never a traceback. The virtual key (`--vk` or BATCHGATE_VK) is
sent as metadata and never printed; values that came from a file or a provider are printed with
their control characters escaped and are never read as markup.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, TextIO

from rich.console import Console
from rich.table import Table
from rich.text import Text

from batchgate_client._cli_common import PROG, Exit, UsageError, make_client, refused_as_a_whole
from batchgate_client.batchfile import BatchFileError, read_batches
from batchgate_client.client import DEFAULT_TARGET, DEFAULT_TIMEOUT, MAX_ITEMS_PER_CALL, BatchgateClient
from batchgate_client.display import JsonView, PlainView, ProgressView, Tally, count, visible
from batchgate_client.errors import BatchgateError, ConnectionFailed
from batchgate_client.models import BatchRef, CancelEvent, Health
from batchgate_client.operations_cli import add_parsers, operations, stop

MAX_WAIT_SECONDS = 3600


# The names of 0.1.
EXIT_OK, EXIT_FAILED, EXIT_USAGE = Exit.OK, Exit.FAILED, Exit.REFUSED


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of argparse's usage block
        self.exit(Exit.REFUSED, f"{self.prog}: {message} (see {self.prog} --help)\n")


def _wait_seconds(value: str) -> int:
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole seconds, got {value!r}") from None
    if not 0 <= seconds <= MAX_WAIT_SECONDS:
        raise argparse.ArgumentTypeError(f"must be between 0 and {MAX_WAIT_SECONDS} seconds")
    return seconds


def _timeout(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not 0 < seconds < 1e6:
        raise argparse.ArgumentTypeError("must be a positive number of seconds")
    return seconds


def _common_options(parser: argparse.ArgumentParser, defaults: bool) -> None:
    """The common options, accepted before and after every subcommand (and between `config` and
    `check`). Only the top level has defaults, so a subcommand's copy never overwrites a value given
    before it."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("common options (before or after the subcommand)")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        default=default(os.environ.get("BATCHGATE_TARGET") or DEFAULT_TARGET),
        help=f"batchgate's gRPC address, the service's or Envoy's (BATCHGATE_TARGET, default {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--tls-ca",
        metavar="FILE",
        default=default(os.environ.get("BATCHGATE_TLS_CA")),
        help="PEM certificate to trust: connect with TLS (BATCHGATE_TLS_CA)",
    )
    group.add_argument(
        "--vk",
        metavar="KEY",
        default=default(None),
        help="virtual key (prefer the BATCHGATE_VK environment variable: arguments are visible to other users)",
    )
    group.add_argument(
        "--admin",
        metavar="USER",
        default=default(os.environ.get("BATCHGATE_ADMIN") or None),
        help="call with the gateway's admin credentials (BATCHGATE_ADMIN); the password comes from "
        "BATCHGATE_ADMIN_PASSWORD, or is asked for on a terminal",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=_timeout,
        default=default(DEFAULT_TIMEOUT),
        help=f"deadline of each call, on top of --wait (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--output",
        "-o",
        choices=("text", "json"),
        default=default("text"),
        help="text (a progress bar on a terminal, plain lines otherwise) or json (one object per item or answer)",
    )


def _version() -> str:
    try:
        return importlib.metadata.version("batchgate-client")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


EXIT_CODES_HELP = (
    "exit codes: 0 nothing failed, 1 some items failed (or: service draining, config invalid, the operation "
    "was stopped), 2 usage, unreadable input, batchgate unreachable or the call refused as a whole (more "
    "matches than --max, permission denied, the answer was no), 130 interrupted"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Cancel LLM batch jobs through batchgate.", epilog=EXIT_CODES_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _common_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    cancel = commands.add_parser(
        "cancel",
        help="cancel batches: IDs with --provider, or a list with --from",
        description="Cancel batches given as IDs (with --provider) or listed in a file (--from). A file holds "
        'JSON lines {"id": ..., "provider": ...} or CSV lines `provider,id`; a header row naming the columns '
        "(`id,provider` or `provider,id`) sets their order and is skipped, never sent; a line with an id alone "
        "takes --provider; blank lines and # comments are skipped. Several batches go through one CancelMany "
        f"call per {MAX_ITEMS_PER_CALL:,}. A batch that had already ended (cancelled, completed, ...) is reported "
        "as `already ended` and is not a failure.",
        epilog=EXIT_CODES_HELP,
    )
    cancel.add_argument("ids", nargs="*", metavar="ID", help="batch ids (all on --provider)")
    cancel.add_argument("--provider", "-p", help="provider of the IDs (and of --from lines that hold an id alone)")
    cancel.add_argument("--from", dest="source", metavar="FILE", help="read the batches from FILE (- for stdin)")
    cancel.add_argument(
        "--wait",
        type=_wait_seconds,
        default=0,
        metavar="SECONDS",
        help=f"wait up to SECONDS (at most {MAX_WAIT_SECONDS}) until each batch is terminal",
    )
    _common_options(cancel, defaults=False)

    add_parsers(commands, lambda sub: _common_options(sub, defaults=False), EXIT_CODES_HELP)

    health = commands.add_parser(
        "health", help="the service's health and each provider's circuit", epilog=EXIT_CODES_HELP
    )
    _common_options(health, defaults=False)

    config = commands.add_parser("config", help="work with a config.json offline")
    _common_options(config, defaults=False)
    config_commands = config.add_subparsers(
        dest="config_command", required=True, metavar="ACTION", parser_class=_Parser
    )
    check = config_commands.add_parser(
        "check",
        help="validate a config.json with the service's own rules",
        description="Validate a config.json with the service's own loader, more strictly than the service at "
        "start: every problem is one line, all in one run (unset env.NAME variables and unreadable file./path "
        "secrets, unknown fields, no provider or no batch-enabled key, an open gateway on BIND_HOST beyond "
        "loopback). Needs the batchgate service package.",
        epilog=EXIT_CODES_HELP,
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--allow-missing-env",
        action="store_true",
        help="check a config without its secrets (a CI): unset variables and missing secret files are notes, "
        "not errors",
    )
    _common_options(check, defaults=False)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    sys.exit(run(argv))


def run(
    argv: Sequence[str] | None = None,
    *,
    stdin: TextIO | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    stdin, stdout, stderr = stdin or sys.stdin, stdout or sys.stdout, stderr or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        if args.command == "config":
            return config_check(args, stdout, stderr)
        args.vk = args.vk or os.environ.get("BATCHGATE_VK") or None
        if args.command == "health":
            return health(args, stdout)
        if args.command == "stop":
            return stop(args, stdin, stdout, stderr)
        if args.command == "operations":
            return operations(args, stdin, stdout, stderr)
        return cancel(args, stdin, stdout, stderr)
    except UsageError as exc:
        print(f"{PROG}: {visible(str(exc))}", file=stderr)
    except ConnectionFailed as exc:
        print(f"{PROG}: cannot reach batchgate at {visible(args.target)}: {visible(exc.message)}", file=stderr)
    except BatchgateError as exc:
        print(f"{PROG}: the call failed: {visible(str(exc))}", file=stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=stderr)
        return Exit.INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
    except Exception as exc:  # a bug: still one line (BATCHGATE_DEBUG=1 shows the traceback)
        if os.environ.get("BATCHGATE_DEBUG"):
            raise
        print(f"{PROG}: unexpected error ({type(exc).__name__}): {visible(str(exc))}", file=stderr)
    return Exit.REFUSED


def _batches(args: argparse.Namespace, stdin: TextIO) -> list[BatchRef]:
    if args.source is not None and args.ids:
        raise UsageError("give batch IDs or --from FILE, not both")
    if args.source is None:
        if not args.ids:
            raise UsageError("nothing to cancel: give batch IDs with --provider, or --from FILE")
        if not args.provider:
            raise UsageError("--provider is required with batch IDs")
        return [BatchRef(batch_id, args.provider) for batch_id in args.ids]
    try:
        if args.source == "-":
            refs = read_batches(stdin, "stdin", args.provider)
        else:
            with open(args.source, encoding="utf-8") as lines:
                refs = read_batches(lines, args.source, args.provider)
    except OSError as exc:
        raise UsageError(f"cannot read {args.source}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise UsageError(f"{args.source}: not UTF-8 text") from None
    except BatchFileError as exc:
        raise UsageError(str(exc)) from None
    if not refs:
        raise UsageError(f"no batches listed in {'stdin' if args.source == '-' else args.source}")
    return refs


def _checked(refs: list[BatchRef]) -> list[BatchRef]:
    """Arguments and stdin may carry bytes that are not UTF-8 (as surrogates); gRPC cannot send them."""
    for ref in refs:
        for name, value in (("batch id", ref.id), ("provider", ref.provider)):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                shown = _escaped(value)
                raise UsageError(f"{name} '{shown}' is not valid UTF-8") from None
    return refs


def _escaped(value: str) -> str:
    """The original bytes of undecodable input as \\xNN (`surrogateescape` is how Python kept them)."""
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = value.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def cancel(args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO) -> int:
    refs = _checked(_batches(args, stdin))
    tally = Tally(len(refs), waiting=args.wait > 0)
    console = Console(file=stdout, highlight=False)
    view: PlainView | ProgressView
    if args.output == "json":
        view = JsonView(tally, stdout, stderr)
    elif console.is_terminal and len(refs) > 1:
        view = ProgressView(tally, console)
    else:
        view = PlainView(tally, stdout, stderr)
    try:
        with make_client(args, stdin) as client, view:
            if len(refs) == 1 and args.source is None:
                view.event(_cancel_one(client, refs[0], args.wait, console))
            else:
                with client.cancel_many(refs, wait_seconds=args.wait, ok_if_ended=True) as events:
                    for event in events:
                        view.event(event)
    except BaseException:
        # Interrupted or cut off midway: what was done so far is worth knowing, then the error.
        if tally.latest:
            view.summary()
        raise
    view.summary()
    return Exit.FAILED if tally.failures() or tally.missing() else Exit.OK


def _cancel_one(client: BatchgateClient, ref: BatchRef, wait: int, console: Console) -> CancelEvent:
    """One batch through the single Cancel (with its wait); its failure is the item's, unless it
    decided nothing (`refused_as_a_whole`)."""
    waiting = Text(f"waiting up to {wait}s for {visible(ref.id)} to be cancelled")
    status = console.status(waiting) if wait and console.is_terminal else None
    try:
        if status is not None:
            with status:
                batch = client.cancel(ref.id, ref.provider, wait_seconds=wait, ok_if_ended=True)
        else:
            batch = client.cancel(ref.id, ref.provider, wait_seconds=wait, ok_if_ended=True)
    except BatchgateError as exc:
        if refused_as_a_whole(exc):
            raise
        return CancelEvent(0, ref.id, ref.provider, True, error=exc)
    return CancelEvent(0, ref.id, ref.provider, True, batch=batch)


def health(args: argparse.Namespace, stdout: TextIO) -> int:
    """Exit 0 when the service answers `ok`, 1 when it is draining."""
    answer: Health | None
    with make_client(args) as client:
        try:
            answer = client.health()
            status = answer.status
        except BatchgateError as exc:
            if exc.code != "draining" or exc.detail is None:
                raise
            answer, status = None, "draining"
    if args.output == "json":
        body = answer.to_dict() if answer is not None else {"status": status}
        print(json.dumps(body, separators=(",", ":")), file=stdout, flush=True)
    else:
        console = Console(file=stdout, highlight=False)
        console.print(Text.assemble(f"batchgate at {visible(args.target)}: ", (visible(status), "bold")))
        if answer is not None and answer.providers:
            table = Table("provider", "circuit")
            for name, provider in answer.providers.items():
                circuit = visible(provider.raw.circuit)
                table.add_row(Text(visible(name)), Text(circuit, style="green" if circuit == "closed" else "red"))
            console.print(table)
    return Exit.OK if status == "ok" else Exit.FAILED


def config_check(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Validates with the service's own loader (imported only here: the rules and messages are the
    service's, and the rest of the client never needs it). Exit 0 valid, 1 invalid."""
    try:
        from service.config.reader import ConfigError
        from service.runtime.check import check_config
    except ImportError as exc:
        raise UsageError(
            "config check validates with the batchgate service's own rules, but the service package is not "
            f"importable here ({exc}); run it in a batchgate checkout's .venv (`make` sets that up)"
        ) from None
    path = args.file
    try:
        config = check_config(path, allow_missing_env=args.allow_missing_env)
    except ConfigError as exc:
        # Every problem, one line each (every unset variable, every unknown field: one run names all).
        if args.output == "json":
            _print_json({"file": path, "ok": False, "error": str(exc), "problems": list(exc.problems)}, stdout)
        else:
            for problem in exc.problems:
                print(f"{PROG}: config error: {visible(problem)}", file=stderr)
        return Exit.FAILED
    not_checked = list(config.report.unresolved)  # --allow-missing-env: what could not be read
    if args.output != "json":
        for unresolved in not_checked:
            print(f"{PROG}: note: not checked: {visible(unresolved)}", file=stderr)
    providers = sorted(config.providers)
    keys = sum(len(provider.keys) for provider in config.providers.values())
    batch_keys = sum(len(provider.batch_keys) for provider in config.providers.values())
    virtual_keys = len(config.virtual_keys)
    if args.output == "json":
        summary = {"providers": providers, "keys": keys, "batch_keys": batch_keys, "virtual_keys": virtual_keys}
        _print_json(
            {"file": path, "ok": True, **summary, **({"not_checked": not_checked} if not_checked else {})}, stdout
        )
    else:
        print(
            f"{visible(path)}: OK: {count(len(providers), 'provider')} ({', '.join(providers) or 'none'}), "
            f"{count(keys, 'key')} ({batch_keys} for batches), {count(virtual_keys, 'virtual key')}",
            file=stdout,
        )
    return Exit.OK


def _print_json(body: dict[str, Any], stdout: TextIO) -> None:
    print(json.dumps(body, separators=(",", ":")), file=stdout, flush=True)
