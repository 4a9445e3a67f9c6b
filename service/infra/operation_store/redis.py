"""The shared engine of the operation store: the Redis that `governance.store` names, shared by every
replica, under `batchgate:ops:`, over the same pooled connections as the rate limits
(service.infra.redis_connections). Every step that must be atomic is one Lua script.

An operation is a hash (its document and what the store keeps beside it), its batches a hash of
`<seq>|<document>` by `<provider>\n<id>`; sorted sets order all operations and each owner's (newest
first) and hold the ones some worker must run by lease expiry; a set per owner holds the running ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import orjson

from service.domain.operations import BatchItem, Operation
from service.infra.operation_store.base import (
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
from service.infra.redis_connections import RedisConnections, Script

# Items written per script call (a 10,000-batch operation is saved in ten).
REDIS_ITEMS_PER_CALL = 1000
PREFIX = "batchgate:ops:"
# Listing order: a sorted set of members `<inverted creation time>|<name>` compared bytewise
# (ZRANGEBYLEX), so the newest comes first and a page token is the last member seen.
_INVERT_US = 10**17

# KEYS: op hash, items hash, active zset. ARGV: holder, now, unless_stopped, doc, done, active, running
# key op, replace, then field/value pairs. Fails with LEASE or STOP; keeps `seq` of existing items.
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

# KEYS: all zset, active zset. ARGV: lowest member (the newest creation time to delete, as a ZRANGEBYLEX
# bound), how many of the oldest to look at, how many to delete at most, key prefix -> names deleted.
_DELETE_FINISHED = Script("""
local members = redis.call('ZREVRANGEBYLEX', KEYS[1], '+', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local deleted = {}
for _, member in ipairs(members) do
  if #deleted >= tonumber(ARGV[3]) then
    break
  end
  local name = string.match(member, '|(.*)$')
  local op = ARGV[4] .. 'op:' .. name
  local values = redis.call('HMGET', op, 'done', 'active', 'owner')
  if values[1] == '1' and values[2] == '0' then
    redis.call('UNLINK', op, ARGV[4] .. 'items:' .. name)
    redis.call('ZREM', KEYS[1], member)
    redis.call('ZREM', ARGV[4] .. 'owner:' .. values[3], member)
    redis.call('ZREM', KEYS[2], name)
    redis.call('SREM', ARGV[4] .. 'running:' .. values[3], name)
    table.insert(deleted, name)
  elseif not values[1] then
    redis.call('ZREM', KEYS[1], member)
  end
end
return deleted
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
        return f"{_INVERT_US - created_us(operation):017d}|{operation.name}"

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
            dumps(operation.to_dict()),
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
        return await decode_items([doc for _, doc in ordered])

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
        mode: SaveMode = SaveMode.MERGE,
    ) -> None:
        name = operation.name
        pairs: list[str] = []
        for item in items:
            pairs += [self._item_field(item), dumps(item.to_dict())]
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
                    "1" if mode is SaveMode.UNLESS_STOPPED else "0",
                    dumps(doc.to_dict()),
                    "1" if doc.done else "0",
                    str(active(doc)),
                    owner_running,
                    "1" if mode is SaveMode.REPLACE and index == 0 else "0",
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

    async def delete_finished(self, created_before: float, limit: int) -> list[str]:
        # Older operations sort later (their inverted creation time is larger): from the oldest on.
        bound = f"[{_INVERT_US - int(created_before * 1_000_000) + 1:017d}"
        keys = (self._all, self._active)
        names = await _DELETE_FINISHED(self._redis, keys, bound, 4 * limit, limit, self._prefix)
        return [name.decode() for name in names]

    async def close(self) -> None:
        await self._redis.close()

    def redact(self, text: str) -> str:
        return self._redis.redact(text)

    def __repr__(self) -> str:
        return f"RedisOperationStore({self.address!r})"
