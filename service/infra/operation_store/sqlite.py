"""The embedded engine of the operation store: a SQLite file under STATE_DIR in WAL mode (readers
never wait for the writer), shared by the workers of one machine. Every statement runs on one thread
of its own, never on the event loop. `synchronous = NORMAL`: a committed write survives the process
being killed; only a power loss can take the last ones back.

Each operation is a row of `operations` (its document and what the store keeps beside it) and each
of its batches a row of `operation_batches`, in the order found (`seq`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import orjson

from service.domain.operations import BatchItem, Operation
from service.infra.operation_store.base import (
    BadPageToken,
    LeaseLost,
    SaveMode,
    StopRequested,
    StoredOperation,
    active,
    created_us,
    decode_items,
    decode_token,
    dumps,
    encode_token,
)

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS operations (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_us INTEGER NOT NULL,
    state TEXT NOT NULL,
    done INTEGER NOT NULL,
    active INTEGER NOT NULL,
    holder TEXT NOT NULL DEFAULT '',
    lease_until REAL NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS operations_newest ON operations (created_us DESC, name DESC);
CREATE INDEX IF NOT EXISTS operations_by_owner ON operations (owner, created_us DESC, name DESC);
CREATE INDEX IF NOT EXISTS operations_to_run ON operations (active, lease_until);
CREATE TABLE IF NOT EXISTS operation_batches (
    operation TEXT NOT NULL,
    provider TEXT NOT NULL,
    batch_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    key_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    cancel_sent INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    doc TEXT NOT NULL,
    PRIMARY KEY (operation, provider, batch_id)
);
"""

_UPSERT_ITEM = """
INSERT INTO operation_batches (operation, provider, batch_id, seq, key_id, outcome, cancel_sent, attempts, doc)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (operation, provider, batch_id) DO UPDATE SET
    key_id = excluded.key_id, outcome = excluded.outcome, cancel_sent = excluded.cancel_sent,
    attempts = excluded.attempts, doc = excluded.doc
"""

_CREATE = (
    "INSERT INTO operations (name, owner, created_us, state, done, active, holder, lease_until, doc)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_CLAIM = (
    "UPDATE operations SET holder = ?, lease_until = ? WHERE name IN"
    " (SELECT name FROM operations WHERE active = 1 AND lease_until < ? ORDER BY created_us LIMIT ?)"
    " AND active = 1 AND lease_until < ? RETURNING name"
)

_FINISHED = "SELECT name FROM operations WHERE done = 1 AND active = 0 AND created_us < ? ORDER BY created_us LIMIT ?"

_FINISHED = "SELECT name FROM operations WHERE done = 1 AND active = 0 AND created_us < ? ORDER BY created_us LIMIT ?"


def _item_rows(name: str, items: Sequence[BatchItem], first_seq: int) -> list[tuple[Any, ...]]:
    return [
        (
            name,
            item.provider,
            item.batch_id,
            first_seq + i,
            item.key_id,
            item.outcome,
            int(item.cancel_sent),
            item.attempts,
            dumps(item.to_dict()),
        )
        for i, item in enumerate(items)
    ]


def _delete(db: sqlite3.Connection, name: str) -> bool:
    db.execute("DELETE FROM operation_batches WHERE operation = ?", (name,))
    return db.execute("DELETE FROM operations WHERE name = ?", (name,)).rowcount > 0


class _Database:
    """The SQLite connection and the one thread every statement runs on."""

    def __init__(self, path: Path, busy_timeout_ms: int) -> None:
        self._thread: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="operation-store")
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
        self.db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self.db.execute("PRAGMA journal_mode = WAL")
        self.db.execute("PRAGMA synchronous = NORMAL")
        self.db.executescript(_SCHEMA)

    async def run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(db)` on the store's thread."""
        if self._thread is None:
            raise RuntimeError("the operation store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, work, self.db)

    async def transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """`work(db)` in one immediate transaction on the store's thread."""

        def transact(db: sqlite3.Connection) -> T:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await self.run(transact)

    async def close(self) -> None:
        if self._thread is None:
            return
        await self.run(lambda db: db.close())
        self._thread.shutdown(wait=True)
        self._thread = None


class SqliteOperationStore:
    """Operations in a SQLite file that the workers of one machine share."""

    kind = "embedded"

    def __init__(self, path: str | os.PathLike[str] | None = None, *, busy_timeout_ms: int = 5000) -> None:
        """`path` None: a file of its own in a private temporary directory, removed on close (one
        server in a test; a gateway always names its file under STATE_DIR)."""
        self._own_dir = None
        if path is None:
            self._own_dir = tempfile.mkdtemp(prefix="batchgate-operations-")
            path = os.path.join(self._own_dir, "operations.sqlite3")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = _Database(self.path, busy_timeout_ms)

    @staticmethod
    def initialize(path: str | os.PathLike[str]) -> None:
        """Creates the file with its schema (the launcher does it once, before its workers start)."""
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(path, isolation_level=None, timeout=5)
        try:
            db.execute("PRAGMA journal_mode = WAL")
            db.executescript(_SCHEMA)
        finally:
            db.close()

    async def create(self, operation: Operation, items: Sequence[BatchItem], holder: str, lease_until: float) -> None:
        row = (
            *(operation.name, operation.owner, created_us(operation), operation.state, int(operation.done)),
            *(active(operation), holder, lease_until, dumps(operation.to_dict())),
        )

        def work(db: sqlite3.Connection) -> None:
            db.execute(_CREATE, row)
            db.executemany(_UPSERT_ITEM, _item_rows(operation.name, items, 0))

        await self._db.transaction(work)

    async def get(self, name: str) -> StoredOperation | None:
        sql = "SELECT doc, holder, lease_until, cancel_requested FROM operations WHERE name = ?"
        row = await self._db.run(lambda db: db.execute(sql, (name,)).fetchone())
        if row is None:
            return None
        return StoredOperation(Operation.from_dict(orjson.loads(row[0])), row[1], row[2], bool(row[3]))

    async def items(self, name: str) -> list[BatchItem]:
        sql = "SELECT doc FROM operation_batches WHERE operation = ? ORDER BY seq"
        rows: list[tuple[str]] = await self._db.run(lambda db: db.execute(sql, (name,)).fetchall())
        return await decode_items([row[0] for row in rows])

    async def page(self, owner: str | None, page_size: int, page_token: str) -> tuple[list[Operation], str]:
        where: list[str] = []
        args: list[str | int] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if page_token:
            created, _, name = decode_token(page_token).partition("|")
            if not created.isdigit():
                raise BadPageToken("page_token is not a token this service issued")
            where.append("(created_us, name) < (?, ?)")
            args += [int(created), name]
        sql = "SELECT created_us, name, doc FROM operations"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_us DESC, name DESC LIMIT ?"
        args.append(page_size + 1)
        rows: list[tuple[int, str, str]] = await self._db.run(lambda db: db.execute(sql, args).fetchall())
        more = len(rows) > page_size
        rows = rows[:page_size]
        token = encode_token(f"{rows[-1][0]}|{rows[-1][1]}") if more and rows else ""
        return [Operation.from_dict(orjson.loads(doc)) for _, _, doc in rows], token

    async def delete(self, name: str) -> bool:
        return await self._db.transaction(lambda db: _delete(db, name))

    async def count_running(self, owner: str) -> int:
        sql = "SELECT count(*) FROM operations WHERE owner = ? AND done = 0"
        row = await self._db.run(lambda db: db.execute(sql, (owner,)).fetchone())
        return int(row[0])

    async def request_cancel(self, name: str) -> bool:
        sql = "UPDATE operations SET cancel_requested = 1 WHERE name = ?"
        return await self._db.run(lambda db: db.execute(sql, (name,)).rowcount > 0)

    async def save(
        self,
        holder: str,
        now: float,
        operation: Operation,
        items: Sequence[BatchItem] = (),
        mode: SaveMode = SaveMode.MERGE,
    ) -> None:
        name = operation.name
        update = (operation.state, int(operation.done), active(operation), dumps(operation.to_dict()), name)

        def work(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT holder, lease_until, cancel_requested FROM operations WHERE name = ?", (name,)
            ).fetchone()
            if row is None or row[0] != holder or row[1] < now:
                raise LeaseLost(name)
            if mode is SaveMode.UNLESS_STOPPED and row[2]:
                raise StopRequested(name)
            db.execute("UPDATE operations SET state = ?, done = ?, active = ?, doc = ? WHERE name = ?", update)
            first = 0
            if mode is SaveMode.REPLACE:
                db.execute("DELETE FROM operation_batches WHERE operation = ?", (name,))
            elif items:
                first = db.execute(
                    "SELECT coalesce(max(seq) + 1, 0) FROM operation_batches WHERE operation = ?", (name,)
                ).fetchone()[0]
            # An existing row keeps its seq (ON CONFLICT does not touch it); new rows follow the last.
            db.executemany(_UPSERT_ITEM, _item_rows(name, items, first))

        await self._db.transaction(work)

    async def claim(self, holder: str, now: float, lease_until: float, limit: int) -> list[str]:
        args = (holder, lease_until, now, limit, now)
        rows = await self._db.run(lambda db: db.execute(_CLAIM, args).fetchall())
        return [row[0] for row in rows]

    async def renew(self, holder: str, names: Sequence[str], now: float, lease_until: float) -> dict[str, bool]:
        if not names:
            return {}
        sql = (
            "UPDATE operations SET lease_until = ? WHERE holder = ? AND lease_until >= ?"
            f" AND name IN ({','.join('?' * len(names))}) RETURNING name, cancel_requested"
        )
        rows = await self._db.run(lambda db: db.execute(sql, (lease_until, holder, now, *names)).fetchall())
        return {row[0]: bool(row[1]) for row in rows}

    async def release(self, holder: str, names: Sequence[str]) -> None:
        if not names:
            return
        sql = (
            "UPDATE operations SET holder = '', lease_until = 0"
            f" WHERE holder = ? AND name IN ({','.join('?' * len(names))})"
        )
        await self._db.run(lambda db: db.execute(sql, (holder, *names)))

    async def delete_finished(self, created_before: float, limit: int) -> list[str]:
        def work(db: sqlite3.Connection) -> list[str]:
            names = [row[0] for row in db.execute(_FINISHED, (int(created_before * 1_000_000), limit)).fetchall()]
            return [name for name in names if _delete(db, name)]

        return await self._db.transaction(work)

    async def close(self) -> None:
        await self._db.close()
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"SqliteOperationStore({str(self.path)!r})"
