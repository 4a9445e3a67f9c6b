"""Virtual-key rate limits that hold across every worker and replica.

A limit is a fixed window: the first counted call opens a window of `request_reset_duration`, at
most `request_max_limit` calls pass in it, and a refused call learns when it resets (`Retry-After`).
The count lives in a store shared by every process that enforces it, and one round trip both counts
the call and reads the window's end, so N workers or replicas let exactly the limit through:

* `EmbeddedStore`: a SQLite file in WAL mode that every worker of one machine opens (the launcher
  creates it and passes its path); one UPSERT ... RETURNING statement counts atomically.
* `RedisStore`: a Lua script (INCR, and PEXPIRE when the window opens) evaluated by Redis, shared by
  every replica, over pooled connections with short timeouts.

The store lives as long as the process, apart from any one Config: counters are keyed by virtual key
id and the limit's own parameters, so a reloaded config with an unchanged limit keeps counting where
it was, and a changed limit starts a fresh window.

When the store fails, `RateLimiter` either goes on counting per process until the store answers
again (`on_error: allow`, the default, as Envoy's rate-limit filter fails open) or refuses limited
calls with 503 `rate_limit_store_unavailable` (`deny`). Either way it warns at most once a minute,
counts `batchgate_rate_limit_store_errors_total`, and after a short pause lets ONE call ask the
store again while the others go on without it, so recovery needs no restart and a dead or hung
store costs one call at most one timeout per pause.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

from prometheus_client import Counter

from service.config.governance import RateLimit, StoreConfig
from service.domain.errors import Overloaded, UpstreamUnavailable
from service.infra.redis_connections import RedisConnections, Script, describe
from service.infra.state import RATE_LIMITS_FILE

log = logging.getLogger(__name__)

STORE_ERRORS = Counter(
    "batchgate_rate_limit_store_errors",
    "Rate-limit store calls that failed (the call was then counted locally or refused)",
    ["store"],
)


class Store(Protocol):
    kind: str

    async def hit(self, key: str, window_s: float) -> tuple[int, float]:
        """Counts one call in `key`'s current window (opening one of `window_s` if none is open) and
        returns (calls counted in the window so far, seconds until it resets)."""

    async def ping(self) -> None:
        """Raises when the store cannot be used."""

    async def close(self) -> None: ...

    def redact(self, text: str) -> str:
        """`text` with anything secret about the store (a password in a URL) masked."""


def counter_key(key_id: str, limit: RateLimit) -> str:
    """One counter per virtual key and limit parameters: an unchanged limit keeps its count across
    config reloads; a changed one starts afresh."""
    return f"{limit.request_max_limit}:{limit.reset_seconds:g}:{key_id}"


# --- embedded: SQLite, shared by the workers of one machine ---------------------------------------

_SCHEMA = "CREATE TABLE IF NOT EXISTS windows (key TEXT PRIMARY KEY, count INTEGER NOT NULL, reset_at REAL NOT NULL)"
# One statement, one implicit transaction: count the call (a window past its end starts over) and
# read the result back. SET expressions see the row as it was before this statement.
_HIT = """
INSERT INTO windows (key, count, reset_at) VALUES (:key, 1, :now + :window)
ON CONFLICT (key) DO UPDATE SET
    count = CASE WHEN windows.reset_at <= :now THEN 1 ELSE windows.count + 1 END,
    reset_at = CASE WHEN windows.reset_at <= :now THEN :now + :window ELSE windows.reset_at END
RETURNING count, reset_at
"""


class EmbeddedStore:
    """A SQLite file in WAL mode. Every process that opens the same path shares the counts. Without a
    path (a test's store) the counts live in this process's memory: nothing is written to disk.

    A counted call is one short write, ~20 us at p50 here (no fsync: counts are worth nothing after
    a reboot), cheaper than a hop to a thread, so it runs on the event loop. But SQLite's busy handler
    sleeps while another worker holds the write lock (tens of ms at the tail), which would stall this
    worker: the loop's attempt never waits (busy timeout 0); a call that finds the lock taken waits
    for it on a thread, for at most `busy_timeout_ms`, and past that fails like any store error."""

    kind = "embedded"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout_ms: int = 200,
    ) -> None:
        self.path = ":memory:" if path is None else os.fspath(path)
        self._clock = clock
        self._busy_timeout_ms = busy_timeout_ms
        self._db = self.initialize(self.path, busy_timeout_ms)  # may wait while other workers start
        self._db.execute("DELETE FROM windows WHERE reset_at <= ?", (clock(),))
        self._db.execute("PRAGMA busy_timeout = 0")
        self._waiting_db: sqlite3.Connection | None = None  # opened on first contention
        self._waiter = ThreadPoolExecutor(1, thread_name_prefix="rate-limit-store")

    @staticmethod
    def path_in(state_dir: str | os.PathLike[str]) -> Path:
        """The store's file in a state directory (STATE_DIR): the launcher and every worker agree."""
        return Path(state_dir) / RATE_LIMITS_FILE

    @staticmethod
    def initialize(path: str | os.PathLike[str], busy_timeout_ms: int = 200) -> sqlite3.Connection:
        """Opens (creating if needed) the store file with its schema. The launcher calls this once
        before starting workers, so they never race to create it."""
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
        db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = OFF")
        db.execute(_SCHEMA)
        return db

    async def hit(self, key: str, window_s: float) -> tuple[int, float]:
        now = self._clock()
        try:
            count, reset_at = self._db.execute(_HIT, {"key": key, "now": now, "window": window_s}).fetchone()
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                raise
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._waiter, self._hit_waiting, key, window_s)
        return count, reset_at - now

    def _hit_waiting(self, key: str, window_s: float) -> tuple[int, float]:
        if self._waiting_db is None:
            self._waiting_db = self.initialize(self.path, self._busy_timeout_ms)
        now = self._clock()
        count, reset_at = self._waiting_db.execute(_HIT, {"key": key, "now": now, "window": window_s}).fetchone()
        return count, reset_at - now

    async def ping(self) -> None:
        self._db.execute("SELECT count(*) FROM windows WHERE 0").fetchone()

    async def close(self) -> None:
        """Closes the files; closing twice is harmless."""
        self._waiter.shutdown(wait=True)
        for db in (self._db, self._waiting_db):
            if db is not None:
                db.close()
        self._waiting_db = None

    def redact(self, text: str) -> str:
        return text

    def __repr__(self) -> str:
        return f"EmbeddedStore({self.path!r})"


# --- redis: shared by every replica -----------------------------------------------------------------

# KEYS[1] counter, ARGV[1] window in ms -> {count, ms until reset}. A key without an expiry (just
# created, or left over) gets one, so every window ends.
_REDIS_HIT = Script("""
local count = redis.call('INCR', KEYS[1])
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  ttl = tonumber(ARGV[1])
end
return {count, ttl}
""")
REDIS_KEY_PREFIX = "batchgate:ratelimit:"


class RedisStore:
    """Counts in Redis with one EVALSHA per call over pooled connections
    (service.infra.redis_connections), short timeouts and no retries (a failing store is the
    limiter's business)."""

    kind = "redis"

    def __init__(self, url: str, *, timeout_s: float = 0.25, max_connections: int = 1000) -> None:
        # A check never waits longer than `timeout_s`, connecting included: a hung Redis costs a
        # limited call at most that (RateLimiter lets one call a second find out).
        self._redis = RedisConnections(url, timeout_s=timeout_s, max_connections=max_connections, connect_allowance=1.0)
        self.address = self._redis.address
        self.timeout_s = timeout_s

    @staticmethod
    def describe(url: str) -> str:
        """The URL without credentials, fit for a log line."""
        return describe(url)

    async def hit(self, key: str, window_s: float) -> tuple[int, float]:
        window_ms = max(1, round(window_s * 1000))
        count, ttl_ms = await _REDIS_HIT(self._redis, (REDIS_KEY_PREFIX + key,), window_ms)
        return int(count), int(ttl_ms) / 1000

    async def ping(self) -> None:
        await self._redis.command("PING")

    async def close(self) -> None:
        await self._redis.close()

    def redact(self, text: str) -> str:
        return self._redis.redact(text)

    def __repr__(self) -> str:
        return f"RedisStore({self.address!r})"


def open_store(settings: StoreConfig, embedded_path: str | os.PathLike[str] | None = None) -> Store:
    """The store `governance.store` asks for. The embedded one uses `embedded_path` (the file the
    workers of one machine share: the state directory's, `--rate-limit-db`, BATCHGATE_RATE_LIMIT_DB),
    else this process's memory."""
    if settings.type == "redis" and settings.url is not None:  # governance.store requires its url
        return RedisStore(settings.url, timeout_s=settings.timeout_s)
    return EmbeddedStore(embedded_path or None)


# --- the limiter ------------------------------------------------------------------------------------


class LocalWindows:
    """Fixed windows counted in this process only: the fallback while the shared store fails."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._windows: dict[str, tuple[int, float]] = {}

    def hit(self, key: str, window_s: float) -> tuple[int, float]:
        now = self._clock()
        count, reset_at = self._windows.get(key, (0, 0.0))
        if reset_at <= now:
            count, reset_at = 0, now + window_s
        self._windows[key] = (count + 1, reset_at)
        return count + 1, reset_at - now


class RateLimiter:
    """Checks a virtual key's limit against the shared store. Created once per process (it owns the
    store's connections) and handed to every Authenticator built from a config."""

    def __init__(
        self,
        store: Store,
        on_error: str = "allow",
        *,
        clock: Callable[[], float] = time.monotonic,
        retry_after_error_s: float = 1.0,
        warn_every_s: float = 60.0,
    ) -> None:
        self.store = store
        # At 0 from the start: an alert on the rate of store errors sees the store before it fails.
        STORE_ERRORS.labels(store.kind)
        self.on_error = on_error
        self._clock = clock
        self._retry_after_error_s = retry_after_error_s
        self._warn_every_s = warn_every_s
        self._local = LocalWindows(clock)
        self._failing_until: float | None = None  # while set and in the future, the store is skipped
        self._probing = False  # a call is asking a store that failed whether it answers again
        self._degraded = False
        self._warned_at = -math.inf

    @classmethod
    def for_config(cls, settings: StoreConfig, embedded_path: str | os.PathLike[str] | None = None) -> RateLimiter:
        return cls(open_store(settings, embedded_path), settings.on_error)

    @property
    def state(self) -> str:
        """`ok`, or `degraded` since the store last failed and until it answers again."""
        return "degraded" if self._degraded else "ok"

    async def check(self, key_id: str, limit: RateLimit) -> None:
        """Counts one call of `key_id`; raises Overloaded (429 `rate_limited`, with Retry-After) over
        the limit, or UpstreamUnavailable (503) when the store fails and `on_error` is `deny`."""
        key = counter_key(key_id, limit)
        count, reset_in = await self._hit(key, limit.reset_seconds)
        if count > limit.request_max_limit:
            raise Overloaded(
                "rate limit exceeded for this virtual key",
                code="rate_limited",
                headers={"retry-after": str(max(1, math.ceil(reset_in)))},
            )

    async def _hit(self, key: str, window_s: float) -> tuple[int, float]:
        # Healthy: every call asks the store. Since a failure: after the pause, one call at a time
        # (the probe) asks it while the others go on without it (a hung store never holds them).
        failing_until = self._failing_until
        probe = failing_until is not None
        if failing_until is None or (self._clock() >= failing_until and not self._probing):
            self._probing = probe
            try:
                result = await self.store.hit(key, window_s)
            except Exception as exc:  # noqa: BLE001 - any store failure is handled the same way
                self._failed(exc)
            else:
                self._recovered()
                return result
            finally:
                if probe:
                    self._probing = False
        if self.on_error == "deny":
            raise UpstreamUnavailable(
                "the rate limit store is unavailable", status_code=503, code="rate_limit_store_unavailable"
            )
        return self._local.hit(key, window_s)

    def _failed(self, exc: BaseException) -> None:
        now = self._clock()
        STORE_ERRORS.labels(self.store.kind).inc()
        self._degraded = True
        self._failing_until = now + self._retry_after_error_s
        if now - self._warned_at >= self._warn_every_s:
            self._warned_at = now
            action = "counting per process" if self.on_error == "allow" else "refusing limited calls"
            log.warning(
                "rate limit store %s failed (%s): %s until it answers again",
                self.store.kind,
                self.store.redact(f"{type(exc).__name__}: {exc}"),
                action,
            )

    def _recovered(self) -> None:
        if self._degraded:
            self._degraded = False
            self._failing_until = None
            log.info("rate limit store %s answers again: shared counting resumed", self.store.kind)

    async def health(self) -> str:
        """Asks the store (one short ping) and returns `ok` or `degraded`; a store that answers ends
        the pause after an error at once. While a call is already asking a failed store, the state
        is reported as it is, without asking again."""
        if self._probing:
            return self.state
        probe = self._failing_until is not None
        self._probing = probe
        try:
            await self.store.ping()
        except Exception as exc:  # noqa: BLE001
            self._failed(exc)
        else:
            self._recovered()
        finally:
            if probe:
                self._probing = False
        return self.state

    async def close(self) -> None:
        await self.store.close()
