"""Rate limits through a real redis-server (tests/conftest.py starts one per test on a free port,
with a password): atomic counting shared by services, a Redis outage with fail-open and deny, and
recovery without a restart. Services are real grpc.aio servers calling the sandbox."""

from __future__ import annotations

import asyncio
import logging
import uuid

import grpc
import pytest
import redis.asyncio
from prometheus_client import REGISTRY

from service.edge.server import Listener, create_server
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from service.infra.limits import REDIS_KEY_PREFIX, RateLimiter, RedisStore
from service.infra.providers.catalog import parse_config
from service.runtime.build import RuntimeFactory
from service.runtime.live import LiveConfig
from tests.conftest import RedisServer
from tests.support import cancel, cancel_failure, config_dict, eventually, running_service, self_signed_cert

VK = "sk-bf-integration-limited-0001"


def new_id() -> str:
    return f"batch_limits_{uuid.uuid4().hex[:12]}"


def limited_config(sandbox_url: str, store: dict, limit: int = 5, window: str = "1m") -> dict:
    config = config_dict(sandbox_url)
    config["governance"] = {
        "rate_limits": [{"id": "lim", "request_max_limit": limit, "request_reset_duration": window}],
        "virtual_keys": [
            {"id": "team", "value": VK, "rate_limit_id": "lim", "provider_configs": [{"provider": "openai"}]}
        ],
        "store": store,
    }
    return config


async def outcome(stub, sim) -> str:
    try:
        await cancel(stub, sim.seed("openai", new_id()).id, metadata=(("x-bf-vk", VK),))
        return "ok"
    except grpc.aio.AioRpcError as err:
        return err.code().name


def admin(redis_server: RedisServer) -> redis.asyncio.Redis:
    """A plain redis-py client for what a test does to Redis itself (flush, pause, look at keys)."""
    return redis.asyncio.Redis.from_url(redis_server.url)


async def test_redis_store_counts_atomically_and_expires_the_window(redis_server):
    stores = [RedisStore(redis_server.url, timeout_s=2.0) for _ in range(3)]  # 30 connects at once
    results = await asyncio.gather(*(stores[i % 3].hit("k", 60) for i in range(30)))
    assert sorted(count for count, _ in results) == list(range(1, 31))
    assert all(59 < reset_in <= 60 for _, reset_in in results)
    count, reset_in = await stores[0].hit("short", 0.05)
    assert (count, reset_in) == (1, 0.05)
    async with admin(redis_server) as redis_admin:
        # Redis ends the window itself (the key's 50 ms expiry): wait for the key to be gone.
        await eventually(_gone(redis_admin, REDIS_KEY_PREFIX + "short"))
    assert (await stores[0].hit("short", 0.05))[0] == 1
    for store in stores:
        await store.close()


def _gone(redis_admin: redis.asyncio.Redis, key: str):
    async def check() -> bool:
        return not await redis_admin.exists(key)

    return check


async def test_a_flushed_script_cache_is_refilled_and_counting_goes_on(redis_server):
    store = RedisStore(redis_server.url)
    assert (await store.hit("k", 60))[0] == 1
    async with admin(redis_server) as redis_admin:
        await redis_admin.script_flush()  # what a restarted or failed-over Redis looks like
    assert (await store.hit("k", 60))[0] == 2
    assert (await store.hit("k", 60))[0] == 3
    await store.close()


async def test_connections_closed_by_a_restarted_redis_are_replaced_before_use(redis_server):
    store = RedisStore(redis_server.url)
    await asyncio.gather(*(store.hit("k", 60) for _ in range(3)))  # three idle connections now
    # The restart happens while the service's loop runs (as it does in production), so the closed
    # connections' end of stream is seen; start() returns once the new Redis answers PING.
    await asyncio.to_thread(redis_server.stop)
    await asyncio.to_thread(redis_server.start)
    # The first check after the restart already counts (Redis came back empty: a new window).
    assert (await store.hit("k", 60))[0] == 1
    await store.ping()
    await store.close()


async def test_a_connection_that_timed_out_is_never_reused(redis_server):
    # A paused Redis answers late: the late reply must not be read as the next check's answer.
    store = RedisStore(redis_server.url, timeout_s=0.05)
    assert (await store.hit("k", 60))[0] == 1
    async with admin(redis_server) as redis_admin:
        await redis_admin.client_pause(300, all=False)  # writes wait 300 ms
        with pytest.raises(TimeoutError):
            await store.hit("k", 60)
        await redis_admin.set("probe", 1)  # a write: it returns once the pause is over
    # Redis drops a paused command whose connection closed; a reused connection would answer the
    # next check (another key) with the late reply for "k".
    assert (await store.hit("other", 60))[0] == 1
    assert (await store.hit("k", 60))[0] == 2
    await store.close()


async def test_two_services_on_one_redis_let_exactly_the_limit_through(sandbox, sim, redis_server):
    config = limited_config(sandbox.url, {"type": "redis", "url": redis_server.url})
    async with running_service(config) as (_, first), running_service(config) as (_, second):
        outcomes = await asyncio.gather(*(outcome((first, second)[i % 2], sim) for i in range(20)))
    assert outcomes.count("ok") == 5
    assert outcomes.count("RESOURCE_EXHAUSTED") == 15
    assert len(sim.calls("openai")) == 5


async def test_outage_fails_open_then_counting_resumes_when_redis_is_back(sandbox, sim, redis_server, caplog):
    caplog.set_level(logging.INFO)
    config = parse_config(limited_config(sandbox.url, {"type": "redis", "url": redis_server.url}, limit=2), env={})
    async with running_service(config) as (app, stub):
        assert [await outcome(stub, sim) for _ in range(3)] == ["ok", "ok", "RESOURCE_EXHAUSTED"]
        redis_server.stop()
        # Counted in this process now: a fresh local window lets 2 more through, then 429.
        assert [await outcome(stub, sim) for _ in range(3)] == ["ok", "ok", "RESOURCE_EXHAUSTED"]
        assert app.limiter.state == "degraded"
        redis_server.start()
        assert await app.limiter.health() == "ok"
        # Redis came back empty (no persistence): a new shared window.
        assert [await outcome(stub, sim) for _ in range(3)] == ["ok", "ok", "RESOURCE_EXHAUSTED"]
    assert "rate limit store redis failed" in caplog.text
    assert redis_server.password not in caplog.text


async def test_outage_with_deny_refuses_limited_calls_with_503(sandbox, sim, redis_server):
    config = limited_config(sandbox.url, {"type": "redis", "url": redis_server.url, "on_error": "deny"})
    async with running_service(config) as (app, stub):
        assert await outcome(stub, sim) == "ok"
        redis_server.stop()
        refused = sim.seed("openai", new_id()).id
        err, detail = await cancel_failure(stub, refused, metadata=(("x-bf-vk", VK),))
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert (detail.status_code, detail.error.code) == (503, "rate_limit_store_unavailable")
        assert redis_server.password not in str(err) + str(detail)
        # Refused before anything went upstream: the provider never heard of the batch.
        assert [c for c in sim.calls() if refused in c["path"]] == []
        assert sim.batch("openai", refused).status == "in_progress"
        # Calls without a limit never touch the store: they go on.
        unlimited = sim.seed("openai", new_id()).id
        await cancel(stub, unlimited)
        assert [c["method"] for c in sim.calls() if unlimited in c["path"]] == ["POST"]
        redis_server.start()
        assert await app.limiter.health() == "ok"
        assert await outcome(stub, sim) == "ok"


async def test_wrong_password_is_a_store_error_without_the_password(redis_server, caplog):
    wrong = f"redis://:wrong-{redis_server.password}@127.0.0.1:{redis_server.port}/0"
    limiter = RateLimiter(RedisStore(wrong))
    assert await limiter.health() == "degraded"
    assert redis_server.password not in caplog.text and "wrong-" not in caplog.text
    await limiter.close()


async def test_an_unreachable_redis_never_holds_a_call_for_long(sandbox, sim):
    # A non-routable address: connecting hangs until the store's timeout (100 ms here).
    config = limited_config(sandbox.url, {"type": "redis", "url": "redis://10.255.255.1:6379/0", "timeout_ms": 100})
    async with running_service(config) as (_, stub):
        loop = asyncio.get_running_loop()
        started = loop.time()
        assert await outcome(stub, sim) == "ok"
        assert loop.time() - started < 2.0
        assert await outcome(stub, sim) == "ok"  # within the pause: not asked again


async def test_a_paused_redis_costs_one_call_per_pause_its_timeout_and_the_others_nothing(sandbox, sim, redis_server):
    # CLIENT PAUSE: Redis accepts commands and answers none, the outage that took 25 % of limited
    # calls ~0.5 s each and logged a dozen errors a second. The pause is a clock the test moves.
    now = [0.0]
    limiter = RateLimiter(RedisStore(redis_server.url, timeout_s=0.1), clock=lambda: now[0])
    config = parse_config(limited_config(sandbox.url, {"type": "redis", "url": redis_server.url}, limit=1000), env={})
    admin = RedisStore(redis_server.url)
    app = await create_server(LiveConfig(config, factory=RuntimeFactory(limiter)), Listener("127.0.0.1:0"))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
    stub = pb_grpc.BatchServiceStub(channel)
    try:
        assert await outcome(stub, sim) == "ok"
        errors = REGISTRY.get_sample_value("batchgate_rate_limit_store_errors_total", {"store": "redis"}) or 0.0
        await admin._redis.command("CLIENT", "PAUSE", 20_000, "WRITE")  # scripts wait, UNPAUSE does not
        assert await outcome(stub, sim) == "ok"  # it waited for the timeout: the store failed open
        assert limiter.state == "degraded"
        # Within the pause every limited call goes on without the store.
        assert await asyncio.gather(*(outcome(stub, sim) for _ in range(10))) == ["ok"] * 10
        now[0] += 1.0
        # After it one call asks the paused store (and waits its timeout); the others do not wait
        # for that one: all of them are answered before it.
        finished: list[str] = []

        async def call(name: str) -> None:
            assert await outcome(stub, sim) == "ok"
            finished.append(name)

        probe = asyncio.create_task(call("probe"))
        while not limiter._probing:
            await asyncio.sleep(0.001)
        await asyncio.gather(*(call(f"other-{i}") for i in range(10)))
        await probe
        assert finished[-1] == "probe" and len(finished) == 11
        errors_now = REGISTRY.get_sample_value("batchgate_rate_limit_store_errors_total", {"store": "redis"})
        assert errors_now == errors + 2  # one per pause, not one per call
    finally:
        await channel.close()
        await app.stop(grace=0)
        await admin._redis.command("CLIENT", "UNPAUSE")
        await admin.close()


@pytest.mark.parametrize("db", ["/0", "/3"])
async def test_the_database_number_is_honoured(redis_server, db):
    url = redis_server.url.rsplit("/", 1)[0] + db
    store = RedisStore(url)
    assert (await store.hit("k", 60))[0] == 1
    await store.close()


async def test_rediss_counts_over_tls(sandbox, sim, tmp_path):
    server = RedisServer(tmp_path, tls=self_signed_cert(tmp_path)).start()
    try:
        config = limited_config(sandbox.url, {"type": "redis", "url": server.url}, limit=2)
        async with running_service(config) as (app, stub):
            assert [await outcome(stub, sim) for _ in range(3)] == ["ok", "ok", "RESOURCE_EXHAUSTED"]
            assert app.limiter.state == "ok" and app.limiter.store.address.startswith("rediss://127.0.0.1:")
        # Plain redis:// to a TLS-only port fails (and the limiter says so) rather than hanging.
        plain = RateLimiter(RedisStore(server.url.replace("rediss://", "redis://").split("?")[0], timeout_s=0.2))
        assert await plain.health() == "degraded"
        await plain.close()
    finally:
        server.stop()


def test_a_percent_escaped_password_is_redacted_in_both_forms():
    store = RedisStore("redis://:p%40ss-w0rd-99@127.0.0.1:6379/0")
    assert "p@ss-w0rd-99" not in store.redact("AUTH p@ss-w0rd-99 failed")
    assert "p%40ss-w0rd-99" not in store.redact("url redis://:p%40ss-w0rd-99@127.0.0.1:6379/0")
