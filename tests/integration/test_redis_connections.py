"""The pooled Redis connections both Redis stores use (service/infra/redis_connections.py), against a
real redis-server (tests/conftest.py starts one per test): connections are reused, bounded, and
dropped when a command fails; scripts run by their SHA-1 and are sent whole only when Redis lacks
them; the password is masked."""

from __future__ import annotations

import asyncio
import hashlib

import pytest

from service.infra.redis_connections import RedisConnections, Script
from tests.support import eventually


def info(text: bytes | str, field: str) -> str:
    """A field of an INFO answer."""
    text = text.decode() if isinstance(text, bytes) else text
    (line,) = [line for line in text.splitlines() if line.startswith(f"{field}:")]
    return line.split(":", 1)[1]


@pytest.fixture
async def admin(redis_server):
    connections = RedisConnections(redis_server.url, timeout_s=5)
    yield connections
    await connections.close()


async def test_commands_one_at_a_time_reuse_one_connection(redis_server):
    redis = RedisConnections(redis_server.url)
    ids = [await redis.command("CLIENT", "ID") for _ in range(3)]
    await redis.close()
    assert len(set(ids)) == 1, ids


async def test_past_max_connections_a_command_fails_at_once_and_a_failed_one_frees_its_place(redis_server, admin):
    redis = RedisConnections(redis_server.url, timeout_s=5, max_connections=2)
    blocked = [asyncio.create_task(redis.command("BLPOP", f"queue{i}", 10)) for i in range(2)]
    await eventually(lambda: blocked_clients(admin, 2))
    with pytest.raises(ConnectionError) as info_:
        await redis.command("PING")
    assert str(info_.value) == "all 2 Redis connections are busy"
    for i in range(2):
        await admin.command("RPUSH", f"queue{i}", "x")
    assert [reply[0] for reply in await asyncio.gather(*blocked)] == [b"queue0", b"queue1"]
    # A command that times out drops its connection and gives its place back.
    one = RedisConnections(redis_server.url, timeout_s=5, max_connections=1)
    with pytest.raises(TimeoutError):
        await one.command("BLPOP", "never", 10, timeout_s=0.1)
    assert await one.command("PING") in (b"PONG", "PONG", True)
    # ... and no more than its place: with that one busy, the next command is refused.
    busy = asyncio.create_task(one.command("BLPOP", "queue0", 10))
    await eventually(lambda: blocked_clients(admin, 1))
    with pytest.raises(ConnectionError):
        await one.command("PING")
    await admin.command("RPUSH", "queue0", "x")
    await busy
    await asyncio.gather(redis.close(), one.close())


async def blocked_clients(admin: RedisConnections, count: int) -> bool:
    return int(info(await admin.command("INFO", "clients"), "blocked_clients")) == count


async def test_a_script_runs_by_its_sha1_and_is_sent_whole_only_when_redis_lacks_it(redis_server, admin):
    source = "return 7"
    script = Script(source)
    assert script.sha == hashlib.sha1(source.encode()).hexdigest()
    redis = RedisConnections(redis_server.url)
    await admin.command("SCRIPT", "FLUSH")
    await admin.command("CONFIG", "RESETSTAT")
    assert [await script(redis, ()) for _ in range(3)] == [7, 7, 7]
    # The NOSCRIPT answer left its connection in step: the pool kept it, one connection all along.
    assert int(info(await admin.command("INFO", "clients"), "connected_clients")) == 2  # and admin's
    await redis.close()
    stats = await admin.command("INFO", "commandstats")
    assert info(stats, "cmdstat_eval").startswith("calls=1,")  # once, to fill the empty cache
    assert int(info(stats, "cmdstat_evalsha").split(",")[0].removeprefix("calls=")) >= 2


def test_the_password_is_masked_in_both_its_forms():
    redis = RedisConnections("redis://:p%40ss-w0rd-99@127.0.0.1:6379/0")
    assert redis.redact("AUTH p@ss-w0rd-99 failed; url redis://:p%40ss-w0rd-99@127.0.0.1:6379/0") == (
        "AUTH *** failed; url ***"
    )
    assert redis.address == "redis://127.0.0.1:6379/0"
    assert RedisConnections("redis://127.0.0.1:6379/0").redact("XXXX and *") == "XXXX and *"  # no password
    # The address for logs names the default port and no path when the URL has none.
    assert RedisConnections("redis://:pw@cache.internal").address == "redis://cache.internal:6379"
