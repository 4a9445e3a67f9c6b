"""Pooled Redis connections for the stores that share a Redis (rate limits, operations).

A free list of redis-py `Connection`s (redis-py reads the URL: TLS, AUTH, db), not
`Redis.execute_command`, whose pool locks, observability events and per-write wait_for task were
~70 of the ~115 us a rate-limit check took here (a loopback round trip: ~60 us). Each command is
capped by one timeout; a connection that failed in any way (a late reply could still come) is never
reused. The password never appears in a log line or an error: `redact` masks it.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any
from urllib.parse import unquote, urlsplit


class RedisConnections:
    """Commands on pooled connections to the Redis at `url`, each capped at `timeout_s` (times
    `connect_allowance` when it must connect first, TLS and AUTH included), no client retries."""

    def __init__(
        self, url: str, *, timeout_s: float = 0.25, max_connections: int = 1000, connect_allowance: float = 2.0
    ) -> None:
        # Imported here: only deployments with a Redis store pay for the import.
        from redis.asyncio import ConnectionPool
        from redis.exceptions import NoScriptError

        parts = urlsplit(url)
        self._secrets = tuple(s for s in (url, parts.password, unquote(parts.password or "")) if s)  # raw, decoded
        self.address = describe(url)
        self.timeout_s = timeout_s
        # No socket timeouts (a wait_for task per write; a burst's connects timed from its start): `command` caps.
        settings = ConnectionPool.from_url(url, socket_timeout=None, socket_connect_timeout=None)
        self._connection_class = settings.connection_class
        self._connection_kwargs = dict(settings.connection_kwargs, health_check_interval=0)
        self.no_script: type[Exception] = NoScriptError
        self._idle: list[Any] = []  # connected and in step, ready for a command
        self._open = 0  # in use or idle; past `max_connections` a command fails like any store error
        self._max_connections = max_connections
        self._connect_allowance = connect_allowance

    async def command(self, *args: object, timeout_s: float | None = None) -> Any:
        """One command on an idle connection, else a new one; capped at `timeout_s` (default: the
        pool's), times `connect_allowance` when it must connect first."""
        timeout = self.timeout_s if timeout_s is None else timeout_s
        conn = self._idle.pop() if self._idle else None
        if conn is not None:
            try:  # data waiting, or closed by Redis while idle (a restart): connect anew (no I/O here)
                connected = not await conn.can_read()
            except Exception:  # noqa: BLE001 - any doubt about an idle connection: replace it
                connected = False
            if not connected:
                await conn.disconnect(nowait=True)
        elif self._open < self._max_connections:
            conn, connected = self._connection_class(**self._connection_kwargs), False
            self._open += 1
        else:
            raise ConnectionError(f"all {self._max_connections} Redis connections are busy")
        try:
            async with asyncio.timeout(timeout if connected else self._connect_allowance * timeout):
                await conn.send_command(*args)
                reply = await conn.read_response()
        except self.no_script:
            self._idle.append(conn)  # a clean error reply: the connection is in step
            raise
        except BaseException:
            self._open -= 1
            await conn.disconnect(nowait=True)
            raise
        self._idle.append(conn)
        return reply

    async def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            self._open -= 1
            await conn.disconnect()

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


class Script:
    """A Lua script run with EVALSHA; a Redis that lost its script cache (restarted, flushed) gets it
    again with EVAL."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(
        self, redis: RedisConnections, keys: tuple[str, ...], *args: object, timeout_s: float | None = None
    ) -> Any:
        try:
            return await redis.command("EVALSHA", self.sha, len(keys), *keys, *args, timeout_s=timeout_s)
        except redis.no_script:
            return await redis.command("EVAL", self.source, len(keys), *keys, *args, timeout_s=timeout_s)


def describe(url: str) -> str:
    """The URL without credentials, fit for a log line."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path or ''}"
