"""What every subcommand of the `batchgate` command shares: the exit codes, the usage error, and the
client made from the common options (target, TLS, virtual key or admin credentials, timeout)."""

from __future__ import annotations

import argparse
import base64
import getpass
import os
import sys
from enum import IntEnum
from typing import TextIO

from batchgate_client.client import BatchgateClient
from batchgate_client.errors import BatchgateError, Unauthenticated

PROG = "batchgate"
ADMIN_PASSWORD_ENV = "BATCHGATE_ADMIN_PASSWORD"


class Exit(IntEnum):
    """The exit codes, the same rule for every subcommand."""

    OK = 0  # nothing failed: every item ended as asked (already ended counts), health ok, config valid
    FAILED = 1  # batchgate answered and some items failed; the service is draining; the config is invalid
    REFUSED = 2  # usage, unreadable input, batchgate unreachable or cut off, a call refused as a whole
    INTERRUPTED = 130  # Ctrl-C


class UsageError(Exception):
    """A problem with what the operator asked (exit 2)."""


def admin_metadata(user: str | None, stdin: TextIO | None = None) -> list[tuple[str, str]]:
    """The gateway's admin credentials as HTTP Basic `authorization` metadata: the user from
    `--admin`, the password from BATCHGATE_ADMIN_PASSWORD (or asked for on a terminal), never from
    an argument other users could see."""
    if not user:
        return []
    password = os.environ.get(ADMIN_PASSWORD_ENV)
    if password is None:
        stdin = stdin or sys.stdin
        if not stdin.isatty():
            raise UsageError(f"--admin {user}: set {ADMIN_PASSWORD_ENV} (there is no terminal to ask on)")
        password = getpass.getpass(f"{PROG}: password of the gateway's admin {user}: ")
    token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
    return [("authorization", f"Basic {token}")]


def make_client(args: argparse.Namespace, stdin: TextIO | None = None) -> BatchgateClient:
    """The client for the common options; the library's argument errors name the options."""
    metadata = admin_metadata(getattr(args, "admin", None), stdin)
    try:
        return BatchgateClient(
            args.target, vk=args.vk, tls_ca=args.tls_ca or None, timeout=args.timeout, metadata=metadata
        )
    except (TypeError, ValueError) as exc:
        # The library names its arguments (tls_ca, vk, target); the operator gave them as options.
        message = str(exc)
        for argument, option in (("tls_ca", "--tls-ca"), ("vk", "--vk (or BATCHGATE_VK)"), ("target", "--target")):
            if message.startswith(argument + " ") or message.startswith(f"cannot read {argument} "):
                message = message.replace(argument, option, 1)
                break
        raise UsageError(message) from None


def refused_as_a_whole(error: BatchgateError) -> bool:
    """Whether a failed call decided nothing about its batches: batchgate was not reached or gave no
    answer of its own (no ErrorDetail: a dead target, a broken connection, the call's own deadline),
    or it refused the caller (its credentials). CancelMany refuses those for the whole call; a single
    cancel's other failures are its item's, as they would be in CancelMany."""
    return error.detail is None or (isinstance(error, Unauthenticated) and error.is_bifrost_error)
