"""The `batchgate` command (also `python -m batchgate_client`).

    batchgate cancel ID [ID ...] --provider P [--wait SECONDS]
    batchgate cancel --from FILE|- [--wait SECONDS] [--output json]
    batchgate config check FILE
    batchgate health

Exit codes: 0 every item done as asked, 1 some items failed (the summary says which), 2 a usage
or connection problem. Every problem is one line on stderr, never a traceback. The virtual key
(`--vk` or BATCHGATE_VK) is sent as metadata and never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.metadata
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from google.protobuf import json_format
from rich.console import Console
from rich.table import Table

from batchgate_client.batchfile import BatchFileError, read_batches
from batchgate_client.client import DEFAULT_TARGET, DEFAULT_TIMEOUT, BatchgateClient, BatchRef, CancelEvent
from batchgate_client.display import JsonView, PlainView, ProgressView, Tally
from batchgate_client.errors import BatchgateError, ConnectionFailed

PROG = "batchgate"
# CancelMany takes 1 to 1,000 items; longer lists are sent as consecutive calls.
MAX_ITEMS_PER_CALL = 1000
MAX_WAIT_SECONDS = 3600

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A problem with what the operator asked (exit 2)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line instead of argparse's usage block
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


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
    """The connection options, accepted before and after the subcommand. Only the top level has
    defaults, so a subcommand's copy never overwrites a value given before it."""

    def default(value: object) -> object:
        return value if defaults else argparse.SUPPRESS

    group = parser.add_argument_group("connection")
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
        help="text (a progress bar on a terminal, plain lines otherwise) or json (one object per item)",
    )


def _version() -> str:
    try:
        return importlib.metadata.version("batchgate-client")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Cancel LLM batch jobs through batchgate.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    _common_options(parser, defaults=True)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    cancel = commands.add_parser(
        "cancel",
        help="cancel batches: IDs with --provider, or a list with --from",
        description="Cancel batches given as IDs (with --provider) or listed in a file (--from): CSV lines "
        '`provider,id` or JSON lines {"id": ..., "provider": ...}. Several batches go '
        "through one CancelMany call per 1,000.",
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

    health = commands.add_parser("health", help="the service's health and each provider's circuit")
    _common_options(health, defaults=False)

    config = commands.add_parser("config", help="work with a config.json offline")
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
    )
    check.add_argument("file", metavar="FILE")
    check.add_argument(
        "--allow-missing-env",
        action="store_true",
        help="check a config without its secrets (a CI): unset variables and missing secret files are notes, "
        "not errors",
    )
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
            return config_check(args.file, stdout, stderr, allow_missing_env=args.allow_missing_env)
        args.vk = args.vk or os.environ.get("BATCHGATE_VK") or None
        if args.command == "health":
            return health(args, stdout)
        return cancel(args, stdin, stdout, stderr)
    except UsageError as exc:
        print(f"{PROG}: {exc}", file=stderr)
    except ConnectionFailed as exc:
        print(f"{PROG}: cannot reach batchgate at {args.target}: {exc.message}", file=stderr)
    except BatchgateError as exc:
        print(f"{PROG}: the call failed: {exc}", file=stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, and keep Python from complaining at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), stdout.fileno())
    except Exception as exc:  # a bug: still one line (BATCHGATE_DEBUG=1 shows the traceback)
        if os.environ.get("BATCHGATE_DEBUG"):
            raise
        print(f"{PROG}: unexpected error ({type(exc).__name__}): {exc}", file=stderr)
    return EXIT_USAGE


def _client(args: argparse.Namespace) -> BatchgateClient:
    tls_ca = None
    if args.tls_ca:
        try:
            tls_ca = Path(args.tls_ca).read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read --tls-ca {args.tls_ca}: {exc.strerror}") from None
    return BatchgateClient(args.target, vk=args.vk, tls_ca=tls_ca, timeout=args.timeout)


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
        with _client(args) as client, view:
            if len(refs) == 1 and args.source is None:
                view.event(_cancel_one(client, refs[0], args.wait, console))
            else:
                _cancel_many(client, refs, args.wait, view)
    except BaseException:
        # Interrupted or cut off midway: what was done so far is worth knowing, then the error.
        if tally.latest:
            view.summary()
        raise
    view.summary()
    return EXIT_FAILED if tally.failures() or tally.missing() else EXIT_OK


def _cancel_one(client: BatchgateClient, ref: BatchRef, wait: int, console: Console) -> CancelEvent:
    """One batch through the single Cancel (with its wait); its failure is the item's, except
    when batchgate could not be reached."""
    status = (
        console.status(f"waiting up to {wait}s for {ref.id} to be cancelled") if wait and console.is_terminal else None
    )
    try:
        if status is not None:
            with status:
                batch = client.cancel(ref.id, ref.provider, wait_seconds=wait)
        else:
            batch = client.cancel(ref.id, ref.provider, wait_seconds=wait)
    except ConnectionFailed:
        raise
    except BatchgateError as exc:
        return CancelEvent(0, ref.id, ref.provider, True, error=exc)
    return CancelEvent(0, ref.id, ref.provider, True, batch=batch)


def _cancel_many(client: BatchgateClient, refs: list[BatchRef], wait: int, view: PlainView | ProgressView) -> None:
    """Every batch through CancelMany, 1,000 per call, one call after the other. A call that fails
    as a whole (bad request, no access, service down) stops here with that error."""
    for offset in range(0, len(refs), MAX_ITEMS_PER_CALL):
        chunk = refs[offset : offset + MAX_ITEMS_PER_CALL]
        for event in client.cancel_many(chunk, wait_seconds=wait):
            view.event(dataclasses.replace(event, index=event.index + offset) if offset else event)


def health(args: argparse.Namespace, stdout: TextIO) -> int:
    """Exit 0 when the service answers `ok`, 1 when it is draining."""
    with _client(args) as client:
        try:
            answer = client.health()
            status = answer.status
        except ConnectionFailed:
            raise
        except BatchgateError as exc:
            if exc.code != "draining":
                raise
            answer, status = None, "draining"
    providers = {name: answer.providers[name].circuit for name in sorted(answer.providers)} if answer else {}
    if args.output == "json":
        body = json_format.MessageToDict(answer, preserving_proto_field_name=True) if answer else {"status": status}
        print(json.dumps(body, separators=(",", ":")), file=stdout, flush=True)
    else:
        console = Console(file=stdout, highlight=False)
        console.print(f"batchgate at {args.target}: [bold]{status}[/bold]")
        if providers:
            table = Table("provider", "circuit")
            for name, circuit in providers.items():
                table.add_row(name, f"[{'green' if circuit == 'closed' else 'red'}]{circuit}[/]")
            console.print(table)
    return EXIT_OK if status == "ok" else EXIT_FAILED


def config_check(path: str, stdout: TextIO, stderr: TextIO, *, allow_missing_env: bool = False) -> int:
    """Validates with the service's own loader (imported only here: the rules and messages are the
    service's, and the rest of the client never needs it)."""
    try:
        from service.config.reader import ConfigError
        from service.runtime.check import check_config
    except ImportError as exc:
        raise UsageError(
            "config check validates with the batchgate service's own rules, but the service package is not "
            f"importable here ({exc}); run it in a batchgate checkout's .venv (`make` sets that up)"
        ) from None
    try:
        config = check_config(path, allow_missing_env=allow_missing_env)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{PROG}: config error: {problem}", file=stderr)
        return EXIT_FAILED
    for unresolved in config.report.unresolved:
        print(f"{PROG}: note: not checked: {unresolved}", file=stderr)
    keys = [key for provider in config.providers.values() for key in provider.keys]
    batch_keys = sum(len(provider.batch_keys) for provider in config.providers.values())
    names = ", ".join(sorted(config.providers)) or "none"
    print(
        f"{path}: OK: {len(config.providers)} providers ({names}), {len(keys)} keys ({batch_keys} for batches), "
        f"{len(config.virtual_keys)} virtual keys",
        file=stdout,
    )
    return EXIT_OK
