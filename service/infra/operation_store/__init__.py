"""Where long-running operations live: one `OperationStore` protocol (base), two engines.

* `SqliteOperationStore` (sqlite, the default): a SQLite file under STATE_DIR, shared by the
  workers of one machine.
* `RedisOperationStore` (redis): when `governance.store` is Redis, shared by every replica.
"""

from __future__ import annotations

import os

from service.infra.operation_store.base import (
    MAX_PAGE_SIZE,
    BadPageToken,
    LeaseLost,
    OperationStore,
    SaveMode,
    StopRequested,
    StoredOperation,
)
from service.infra.operation_store.redis import RedisOperationStore
from service.infra.operation_store.sqlite import SqliteOperationStore

__all__ = [
    "MAX_PAGE_SIZE",
    "BadPageToken",
    "LeaseLost",
    "OperationStore",
    "RedisOperationStore",
    "SaveMode",
    "SqliteOperationStore",
    "StopRequested",
    "StoredOperation",
    "open_operation_store",
]


def open_operation_store(store_type: str, url: str | None, path: str | os.PathLike[str] | None) -> OperationStore:
    """The engine `governance.store` implies: Redis when it is Redis, else the SQLite file `path`
    (None: a private one, see SqliteOperationStore)."""
    if store_type == "redis" and url:
        return RedisOperationStore(url)
    return SqliteOperationStore(path)
