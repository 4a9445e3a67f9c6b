"""STATE_DIR: the one directory for state that must outlive a restart of the service.

What lives there, by file name: the embedded rate-limit store (`rate-limits.sqlite3`, so a daily
limit is not reset by a restart) and, without a Redis store, the long-running operations
(`operations.sqlite3`). Nothing else of a run goes there: sockets, published config versions and
generated files live in the run's own temporary directory (gateway/stack.py).

`python -m service --state-dir DIR`; default: the STATE_DIR environment variable, else build/state
in the working directory (`make run` passes build/state of the checkout). Never a temporary
directory: what is there must survive a restart.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

STATE_DIR_ENV = "STATE_DIR"
# Relative to the working directory.
DEFAULT_STATE_DIR = Path("build") / "state"
# The embedded rate-limit store's SQLite file (service.infra.limits.EmbeddedStore).
RATE_LIMITS_FILE = "rate-limits.sqlite3"
# The long-running operations' SQLite file (without a Redis store).
OPERATIONS_FILE = "operations.sqlite3"


def state_dir_from(environ: Mapping[str, str], default: Path | None = None) -> Path | None:
    """STATE_DIR from `environ` as an absolute path (a relative one is taken from the current
    directory), else `default`."""
    value = environ.get(STATE_DIR_ENV)
    return Path(os.path.abspath(value)) if value else default


def prepare(state_dir: str | os.PathLike) -> Path:
    """The state directory, created if needed (OSError when it cannot be)."""
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
