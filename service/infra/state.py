"""STATE_DIR: the one directory for state that must outlive a restart of the service.

What lives there, by file name: the embedded rate-limit store (`rate-limits.sqlite3`, so a daily
limit is not reset by a restart) and, without a Redis store, the long-running operations
(`operations.sqlite3`). Nothing else of a run goes there: sockets, published config versions and
generated files live in the run's own temporary directory (gateway/stack.py).

Which directory: `python -m service --state-dir DIR`, default the STATE_DIR setting
(service.config.settings: build/state in the working directory; `make run` passes build/state of
the checkout). Never a temporary directory: what is there must survive a restart.
"""

from __future__ import annotations

import os
from pathlib import Path

# The embedded rate-limit store's SQLite file (service.infra.limits.EmbeddedStore).
RATE_LIMITS_FILE = "rate-limits.sqlite3"
# The long-running operations' SQLite file (without a Redis store).
OPERATIONS_FILE = "operations.sqlite3"


def prepare(state_dir: str | os.PathLike[str]) -> Path:
    """The state directory, created if needed (OSError when it cannot be)."""
    path = Path(state_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path
