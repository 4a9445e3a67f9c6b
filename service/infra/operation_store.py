"""Where long-running operations live: one `OperationStore` protocol, two engines.

* `SqliteOperationStore` (default): a SQLite file under STATE_DIR in WAL mode, shared by the workers
  of one machine. Every statement runs on one thread of its own, never on the event loop.
* `RedisOperationStore`: when `governance.store` is Redis (shared by every replica), over the same
  pooled connections as the rate limits (service.infra.redis_connections); every step that must be
  atomic is one Lua script.

Each operation is a row (its document, owner, creation time, whether some worker must still run it,
the lease: who runs it and until when, and `cancel_requested`), and each of its batches a row of its
own. Writes that a worker makes while running an operation (`save`) succeed only while it holds the
lease, and, with `check_stop`, only while nobody asked to cancel it: a worker that lost its lease or
was asked to stop learns it on its next write (`LeaseLost`, `StopRequested`) and nothing of its
reaches the store after that.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from service.domain.operations import NOTIFY_PENDING, BatchItem, Operation
from service.infra.redis_connections import RedisConnections, Script

# The largest page ListOperations answers.
MAX_PAGE_SIZE = 1000
# Items written per Redis script call (a 10,000-batch operation is saved in ten).
REDIS_ITEMS_PER_CALL = 1000


class LeaseLost(Exception):
    """This worker no longer runs the operation: another took it over, it was deleted, or the lease
    expired before it was renewed."""


class StopRequested(Exception):
    """CancelOperation was asked for: no new cancel may start."""


class BadPageToken(ValueError):
    """A page token this store did not issue."""


@dataclass(slots=True)
class StoredOperation:
    """An operation with what the store keeps beside it."""

    operation: Operation
    holder: str = ""
    lease_until: float = 0.0
    cancel_requested: bool = False


class OperationStore(Protocol):
    kind: str

    async def create(self, operation: Operation, items: Sequence[BatchItem], holder: str, lease_until: float) -> None:
        """Stores a new operation (and its named batches), leased to `holder` until `lease_until`."""

    async def get(self, name: str) -> StoredOperation | None: ...

    async def items(self, name: str) -> list[BatchItem]:
        """The operation's batches in the order they were found or named."""

    async def page(self, owner: str | None, page_size: int, page_token: str) -> tuple[list[Operation], str]:
        """Operations newest first (`owner` None: everyone's), up to `page_size` after the position
        `page_token` names ("" the start); the token of the next page ("" at the end). Raises
        BadPageToken."""

    async def delete(self, name: str) -> bool: ...

    async def count_running(self, owner: str) -> int:
        """How many of `owner`'s operations are not done."""

    async def request_cancel(self, name: str) -> bool:
        """Marks the operation for cancelling; False when it does not exist."""

    async def save(
        self,
        holder: str,
        now: float,
        operation: Operation,
        items: Sequence[BatchItem] = (),
        *,
        replace_items: bool = False,
        check_stop: bool = False,
    ) -> None:
        """Writes the operation and `items` (all of its batches with `replace_items`) in one
        transaction, if `holder` still holds an unexpired lease (else LeaseLost) and, with
        `check_stop`, nobody asked to cancel it (else StopRequested)."""

    async def claim(self, holder: str, now: float, lease_until: float, limit: int) -> list[str]:
        """Atomically takes up to `limit` operations that some worker must run and whose lease
        expired; returns their names."""

    async def renew(self, holder: str, names: Sequence[str], now: float, lease_until: float) -> dict[str, bool]:
        """Extends the leases `holder` still holds (unexpired) among `names`; returns those, each with
        whether a cancel was asked for."""

    async def release(self, holder: str, names: Sequence[str]) -> None:
        """Gives leases up at once (graceful shutdown), so another worker resumes without waiting."""

    async def close(self) -> None: ...


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _active(operation: Operation) -> int:
    """Whether some worker must still run the operation: not done, or its webhook not delivered."""
    return int(not operation.done or operation.notification.state == NOTIFY_PENDING)


def _created_us(operation: Operation) -> int:
    return int(operation.create_time * 1_000_000)


def encode_token(cursor: str) -> str:
    return base64.urlsafe_b64encode(cursor.encode()).decode().rstrip("=")


def decode_token(token: str) -> str:
    try:
        cursor = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise BadPageToken("page_token is not a token this service issued") from None
    if "|" not in cursor:
        raise BadPageToken("page_token is not a token this service issued")
    return cursor


# --- SQLite -------------------------------------------------------------------------------------

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


class SqliteOperationStore:
    """Operations in a SQLite file (WAL mode: readers never wait for the writer) that the workers of
    one machine share. `synchronous = NORMAL`: a committed write survives the process being killed;
    only a power loss can take the last ones back."""

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
        self._thread: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="operation-store")
        self._db = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
        )
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(_SCHEMA)

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

    async def _run(self, function: Any, *args: Any) -> Any:
        if self._thread is None:
            raise RuntimeError("the operation store is closed")
        return await asyncio.get_running_loop().run_in_executor(self._thread, function, *args)

    def _transaction(self, work: Any) -> Any:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            result = work(db)
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    @staticmethod
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
                _dumps(item.to_dict()),
            )
            for i, item in enumerate(items)
        ]

    async def create(self, operation: Operation, items: Sequence[BatchItem], holder: str, lease_until: float) -> None:
        def work(db: sqlite3.Connection) -> None:
            db.execute(
                "INSERT INTO operations (name, owner, created_us, state, done, active, holder, lease_until, doc)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    operation.name,
                    operation.owner,
                    _created_us(operation),
                    operation.state,
                    int(operation.done),
                    _active(operation),
                    holder,
                    lease_until,
                    _dumps(operation.to_dict()),
                ),
            )
            db.executemany(_UPSERT_ITEM, self._item_rows(operation.name, items, 0))

        await self._run(self._transaction, work)

    async def get(self, name: str) -> StoredOperation | None:
        def work() -> StoredOperation | None:
            row = self._db.execute(
                "SELECT doc, holder, lease_until, cancel_requested FROM operations WHERE name = ?", (name,)
            ).fetchone()
            if row is None:
                return None
            return StoredOperation(Operation.from_dict(orjson.loads(row[0])), row[1], row[2], bool(row[3]))

        result: StoredOperation | None = await self._run(work)
        return result

    async def items(self, name: str) -> list[BatchItem]:
        def work() -> list[BatchItem]:
            rows = self._db.execute(
                "SELECT doc FROM operation_batches WHERE operation = ? ORDER BY seq", (name,)
            ).fetchall()
            return [BatchItem.from_dict(orjson.loads(row[0])) for row in rows]

        result: list[BatchItem] = await self._run(work)
        return result

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

        def work() -> list[tuple[int, str, str]]:
            return self._db.execute(sql, args).fetchall()

        rows: list[tuple[int, str, str]] = await self._run(work)
        more = len(rows) > page_size
        rows = rows[:page_size]
        token = encode_token(f"{rows[-1][0]}|{rows[-1][1]}") if more and rows else ""
        return [Operation.from_dict(orjson.loads(doc)) for _, _, doc in rows], token

    async def delete(self, name: str) -> bool:
        def work(db: sqlite3.Connection) -> bool:
            db.execute("DELETE FROM operation_batches WHERE operation = ?", (name,))
            return db.execute("DELETE FROM operations WHERE name = ?", (name,)).rowcount > 0

        result: bool = await self._run(self._transaction, work)
        return result

    async def count_running(self, owner: str) -> int:
        def work() -> int:
            row = self._db.execute("SELECT count(*) FROM operations WHERE owner = ? AND done = 0", (owner,)).fetchone()
            return int(row[0])

        result: int = await self._run(work)
        return result

    async def request_cancel(self, name: str) -> bool:
        def work() -> bool:
            return self._db.execute("UPDATE operations SET cancel_requested = 1 WHERE name = ?", (name,)).rowcount > 0

        result: bool = await self._run(work)
        return result

    async def save(
        self,
        holder: str,
        now: float,
        operation: Operation,
        items: Sequence[BatchItem] = (),
        *,
        replace_items: bool = False,
        check_stop: bool = False,
    ) -> None:
        name = operation.name

        def work(db: sqlite3.Connection) -> None:
            row = db.execute(
                "SELECT holder, lease_until, cancel_requested FROM operations WHERE name = ?", (name,)
            ).fetchone()
            if row is None or row[0] != holder or row[1] < now:
                raise LeaseLost(name)
            if check_stop and row[2]:
                raise StopRequested(name)
            db.execute(
                "UPDATE operations SET state = ?, done = ?, active = ?, doc = ? WHERE name = ?",
                (operation.state, int(operation.done), _active(operation), _dumps(operation.to_dict()), name),
            )
            first = 0
            if replace_items:
                db.execute("DELETE FROM operation_batches WHERE operation = ?", (name,))
            elif items:
                first = db.execute(
                    "SELECT coalesce(max(seq) + 1, 0) FROM operation_batches WHERE operation = ?", (name,)
                ).fetchone()[0]
            # An existing row keeps its seq (ON CONFLICT does not touch it); new rows follow the last.
            db.executemany(_UPSERT_ITEM, self._item_rows(name, items, first))

        await self._run(self._transaction, work)

    async def claim(self, holder: str, now: float, lease_until: float, limit: int) -> list[str]:
        def work() -> list[str]:
            rows = self._db.execute(
                "UPDATE operations SET holder = ?, lease_until = ? WHERE name IN"
                " (SELECT name FROM operations WHERE active = 1 AND lease_until < ? ORDER BY created_us LIMIT ?)"
                " AND active = 1 AND lease_until < ? RETURNING name",
                (holder, lease_until, now, limit, now),
            ).fetchall()
            return [row[0] for row in rows]

        result: list[str] = await self._run(work)
        return result

    async def renew(self, holder: str, names: Sequence[str], now: float, lease_until: float) -> dict[str, bool]:
        if not names:
            return {}
        marks = ",".join("?" * len(names))

        def work() -> dict[str, bool]:
            rows = self._db.execute(
                f"UPDATE operations SET lease_until = ? WHERE holder = ? AND lease_until >= ? AND name IN ({marks})"
                " RETURNING name, cancel_requested",
                (lease_until, holder, now, *names),
            ).fetchall()
            return {row[0]: bool(row[1]) for row in rows}

        result: dict[str, bool] = await self._run(work)
        return result

    async def release(self, holder: str, names: Sequence[str]) -> None:
        if not names:
            return
        marks = ",".join("?" * len(names))

        def work() -> None:
            self._db.execute(
                f"UPDATE operations SET holder = '', lease_until = 0 WHERE holder = ? AND name IN ({marks})",
                (holder, *names),
            )

        await self._run(work)

    async def close(self) -> None:
        if self._thread is None:
            return
        await self._run(self._db.close)
        self._thread.shutdown(wait=True)
        self._thread = None
        if self._own_dir is not None:
            shutil.rmtree(self._own_dir, ignore_errors=True)

    def __repr__(self) -> str:
        return f"SqliteOperationStore({str(self.path)!r})"


# --- Redis --------------------------------------------------------------------------------------

PREFIX = "batchgate:ops:"
# Listing order: a sorted set of members `<inverted creation time>|<name>` compared bytewise
# (ZRANGEBYLEX), so the newest comes first and a page token is the last member seen.
_INVERT_US = 10**17

# KEYS: op hash, items hash, active zset. ARGV: holder, now, check_stop, doc, done, active, running key
# op, replace, then field/value pairs. Fails with LEASE or STOP; keeps `seq` of existing items.
_SAVE = Script("""
local op = KEYS[1]
local holder = redis.call('HGET', op, 'holder')
local lease = tonumber(redis.call('HGET', op, 'lease_until') or '0')
if (not holder) or holder ~= ARGV[1] or lease < tonumber(ARGV[2]) then
  return redis.error_reply('LEASE')
end
if ARGV[3] == '1' and redis.call('HGET', op, 'cancel_requested') == '1' then
  return redis.error_reply('STOP')
end
local name = redis.call('HGET', op, 'name')
redis.call('HSET', op, 'doc', ARGV[4], 'done', ARGV[5], 'active', ARGV[6])
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[3], lease, name)
else
  redis.call('ZREM', KEYS[3], name)
end
if ARGV[5] == '1' then
  redis.call('SREM', ARGV[7], name)
end
if ARGV[8] == '1' then
  redis.call('DEL', KEYS[2])
end
local next_seq = tonumber(redis.call('HGET', op, 'next_seq') or '0')
for i = 9, #ARGV, 2 do
  local existing = redis.call('HGET', KEYS[2], ARGV[i])
  local seq
  if existing then
    seq = string.match(existing, '^(%d+)|')
  else
    seq = tostring(next_seq)
    next_seq = next_seq + 1
  end
  redis.call('HSET', KEYS[2], ARGV[i], seq .. '|' .. ARGV[i + 1])
end
redis.call('HSET', op, 'next_seq', next_seq)
return 1
""")

# KEYS: active zset. ARGV: holder, now, lease_until, limit, op key prefix.
_CLAIM = Script("""
local names = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[2], 'LIMIT', 0, tonumber(ARGV[4]))
local claimed = {}
for _, name in ipairs(names) do
  local op = ARGV[5] .. name
  if redis.call('HGET', op, 'active') == '1' then
    redis.call('HSET', op, 'holder', ARGV[1], 'lease_until', ARGV[3])
    redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), name)
    table.insert(claimed, name)
  else
    redis.call('ZREM', KEYS[1], name)
  end
end
return claimed
""")

# KEYS: active zset. ARGV: holder, now, lease_until, op key prefix, names... -> {name, cancel_requested}...
_RENEW = Script("""
local held = {}
for i = 5, #ARGV do
  local op = ARGV[4] .. ARGV[i]
  local values = redis.call('HMGET', op, 'holder', 'lease_until', 'cancel_requested', 'active')
  if values[1] == ARGV[1] and tonumber(values[2] or '0') >= tonumber(ARGV[2]) then
    redis.call('HSET', op, 'lease_until', ARGV[3])
    if values[4] == '1' then
      redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[i])
    end
    table.insert(held, ARGV[i])
    table.insert(held, values[3] or '0')
  end
end
return held
""")

# KEYS: active zset. ARGV: holder, op key prefix, names...
_RELEASE = Script("""
for i = 3, #ARGV do
  local op = ARGV[2] .. ARGV[i]
  if redis.call('HGET', op, 'holder') == ARGV[1] then
    redis.call('HSET', op, 'holder', '', 'lease_until', '0')
    if redis.call('HGET', op, 'active') == '1' then
      redis.call('ZADD', KEYS[1], 0, ARGV[i])
    end
  end
end
return 1
""")

# KEYS: order zset. ARGV: lex start, count, op key prefix -> {member, doc}...
_PAGE = Script("""
local members = redis.call('ZRANGEBYLEX', KEYS[1], ARGV[1], '+', 'LIMIT', 0, tonumber(ARGV[2]))
local out = {}
for _, member in ipairs(members) do
  local name = string.match(member, '|(.*)$')
  local doc = redis.call('HGET', ARGV[3] .. name, 'doc')
  if doc then
    table.insert(out, member)
    table.insert(out, doc)
  end
end
return out
""")

# KEYS: op hash, items hash, all zset, owner zset, active zset, running set. ARGV: name, member.
_DELETE = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('ZREM', KEYS[3], ARGV[2])
redis.call('ZREM', KEYS[4], ARGV[2])
redis.call('ZREM', KEYS[5], ARGV[1])
redis.call('SREM', KEYS[6], ARGV[1])
return 1
""")

# KEYS: op hash, active zset, all zset, owner zset, running set. ARGV: name, owner, member, holder,
# lease_until, doc.
_CREATE = Script("""
redis.call('HSET', KEYS[1], 'name', ARGV[1], 'owner', ARGV[2], 'member', ARGV[3], 'holder', ARGV[4],
  'lease_until', ARGV[5], 'cancel_requested', '0', 'done', '0', 'active', '1', 'next_seq', '0', 'doc', ARGV[6])
redis.call('ZADD', KEYS[2], tonumber(ARGV[5]), ARGV[1])
redis.call('ZADD', KEYS[3], 0, ARGV[3])
redis.call('ZADD', KEYS[4], 0, ARGV[3])
redis.call('SADD', KEYS[5], ARGV[1])
return 1
""")

# KEYS: op hash. Sets cancel_requested on an existing operation.
_REQUEST_CANCEL = Script("""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
return 1
""")


class RedisOperationStore:
    """Operations in the Redis every replica shares (`governance.store`), under `batchgate:ops:`.
    Commands that move a whole operation's batches may take longer than a rate-limit check, so
    they get `timeout_s` (10 s) rather than the store's `timeout_ms`."""

    kind = "redis"

    def __init__(self, url: str, *, timeout_s: float = 10.0, prefix: str = PREFIX) -> None:
        self._redis = RedisConnections(url, timeout_s=timeout_s, max_connections=64)
        self.address = self._redis.address
        self._prefix = prefix
        self._active = prefix + "active"
        self._all = prefix + "all"

    def _op(self, name: str) -> str:
        return f"{self._prefix}op:{name}"

    def _items(self, name: str) -> str:
        return f"{self._prefix}items:{name}"

    def _owner(self, owner: str) -> str:
        return f"{self._prefix}owner:{owner}"

    def _running(self, owner: str) -> str:
        return f"{self._prefix}running:{owner}"

    @staticmethod
    def _member(operation: Operation) -> str:
        return f"{_INVERT_US - _created_us(operation):017d}|{operation.name}"

    @staticmethod
    def _item_field(item: BatchItem) -> str:
        return f"{item.provider}\n{item.batch_id}"

    async def create(self, operation: Operation, items: Sequence[BatchItem], holder: str, lease_until: float) -> None:
        name = operation.name
        keys = (self._op(name), self._active, self._all, self._owner(operation.owner), self._running(operation.owner))
        await _CREATE(
            self._redis,
            keys,
            name,
            operation.owner,
            self._member(operation),
            holder,
            repr(lease_until),
            _dumps(operation.to_dict()),
        )
        if items:
            await self.save(holder, 0.0, operation, items)

    async def get(self, name: str) -> StoredOperation | None:
        values = await self._redis.command("HMGET", self._op(name), "doc", "holder", "lease_until", "cancel_requested")
        if values[0] is None:
            return None
        return StoredOperation(
            Operation.from_dict(orjson.loads(values[0])),
            (values[1] or b"").decode(),
            float(values[2] or 0),
            values[3] == b"1",
        )

    async def items(self, name: str) -> list[BatchItem]:
        flat = await self._redis.command("HGETALL", self._items(name))
        values = flat.values() if isinstance(flat, dict) else flat[1::2]
        ordered = []
        for value in values:
            seq, _, doc = value.partition(b"|")
            ordered.append((int(seq), doc))
        ordered.sort(key=lambda pair: pair[0])
        return [BatchItem.from_dict(orjson.loads(doc)) for _, doc in ordered]

    async def page(self, owner: str | None, page_size: int, page_token: str) -> tuple[list[Operation], str]:
        start = "(" + decode_token(page_token) if page_token else "-"
        order = self._all if owner is None else self._owner(owner)
        flat = await _PAGE(self._redis, (order,), start, page_size + 1, self._prefix + "op:")
        pairs = list(zip(flat[0::2], flat[1::2], strict=True))
        more = len(pairs) > page_size
        pairs = pairs[:page_size]
        token = encode_token(pairs[-1][0].decode()) if more and pairs else ""
        return [Operation.from_dict(orjson.loads(doc)) for _, doc in pairs], token

    async def delete(self, name: str) -> bool:
        values = await self._redis.command("HMGET", self._op(name), "member", "owner")
        if values[0] is None:
            return False
        member, owner = values[0].decode(), values[1].decode()
        keys = (self._op(name), self._items(name), self._all, self._owner(owner), self._active, self._running(owner))
        return bool(await _DELETE(self._redis, keys, name, member))

    async def count_running(self, owner: str) -> int:
        return int(await self._redis.command("SCARD", self._running(owner)))

    async def request_cancel(self, name: str) -> bool:
        return bool(await _REQUEST_CANCEL(self._redis, (self._op(name),)))

    async def save(
        self,
        holder: str,
        now: float,
        operation: Operation,
        items: Sequence[BatchItem] = (),
        *,
        replace_items: bool = False,
        check_stop: bool = False,
    ) -> None:
        name = operation.name
        pairs: list[str] = []
        for item in items:
            pairs += [self._item_field(item), _dumps(item.to_dict())]
        chunk = 2 * REDIS_ITEMS_PER_CALL
        # The items go first, chunk by chunk; the operation's document with the last chunk. A crash
        # in between leaves the document as it was (a listing restarts and replaces the batches).
        chunks = [pairs[i : i + chunk] for i in range(0, len(pairs), chunk)] or [[]]
        previous = await self.get(name) if len(chunks) > 1 else None
        owner_running = self._running(operation.owner)
        for index, part in enumerate(chunks):
            last = index == len(chunks) - 1
            doc = operation if last or previous is None else previous.operation
            try:
                await _SAVE(
                    self._redis,
                    (self._op(name), self._items(name), self._active),
                    holder,
                    repr(now),
                    "1" if check_stop else "0",
                    _dumps(doc.to_dict()),
                    "1" if doc.done else "0",
                    str(_active(doc)),
                    owner_running,
                    "1" if replace_items and index == 0 else "0",
                    *part,
                )
            except Exception as exc:
                text = str(exc)
                if text.startswith("LEASE"):
                    raise LeaseLost(name) from None
                if text.startswith("STOP"):
                    raise StopRequested(name) from None
                raise

    async def claim(self, holder: str, now: float, lease_until: float, limit: int) -> list[str]:
        names = await _CLAIM(
            self._redis, (self._active,), holder, repr(now), repr(lease_until), limit, self._prefix + "op:"
        )
        return [name.decode() for name in names]

    async def renew(self, holder: str, names: Sequence[str], now: float, lease_until: float) -> dict[str, bool]:
        if not names:
            return {}
        flat = await _RENEW(
            self._redis, (self._active,), holder, repr(now), repr(lease_until), self._prefix + "op:", *names
        )
        return {name.decode(): requested == b"1" for name, requested in zip(flat[0::2], flat[1::2], strict=True)}

    async def release(self, holder: str, names: Sequence[str]) -> None:
        if names:
            await _RELEASE(self._redis, (self._active,), holder, self._prefix + "op:", *names)

    async def close(self) -> None:
        await self._redis.close()

    def redact(self, text: str) -> str:
        return self._redis.redact(text)

    def __repr__(self) -> str:
        return f"RedisOperationStore({self.address!r})"


def open_operation_store(store_type: str, url: str | None, path: str | os.PathLike[str] | None) -> OperationStore:
    """The engine `governance.store` implies: Redis when it is Redis, else the SQLite file `path`
    (None: a private one, see SqliteOperationStore)."""
    if store_type == "redis" and url:
        return RedisOperationStore(url)
    return SqliteOperationStore(path)
