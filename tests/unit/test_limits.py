"""Rate-limit counting (service.infra.limits) with injected clocks: windows, sharing through one SQLite
file, failure handling (fail open, deny, recovery, warnings at most once a minute) and the config
of `governance.store`. No sleeps: time is a number the tests move."""

from __future__ import annotations

import asyncio
import logging

import pytest
from prometheus_client import REGISTRY

from service.config.governance import RateLimit, StoreConfig
from service.config.reader import ConfigError
from service.domain.errors import InvalidRequest, Overloaded, UpstreamUnavailable
from service.infra.limits import EmbeddedStore, RateLimiter, RedisStore, counter_key
from service.infra.providers.catalog import parse_config
from service.runtime.build import RuntimeFactory
from service.usecases.auth import Authenticator, Caller


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FlakyStore:
    """A store that fails while `down` is set, and records every call it gets."""

    kind = "redis"

    def __init__(self, clock: Clock, secret: str = "") -> None:
        self.inner = EmbeddedStore(":memory:", clock=clock)
        self.down = False
        self.calls = 0
        self.secret = secret

    async def hit(self, key: str, window_s: float) -> tuple[int, float]:
        self.calls += 1
        if self.down:
            raise ConnectionError(f"Error connecting to redis://:{self.secret}@10.0.0.1:6379/0")
        return await self.inner.hit(key, window_s)

    async def ping(self) -> None:
        if self.down:
            raise ConnectionError("down")

    async def close(self) -> None:
        await self.inner.close()

    def redact(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text


LIMIT = RateLimit("three-per-minute", 3, 60.0)


def store_errors() -> float:
    return REGISTRY.get_sample_value("batchgate_rate_limit_store_errors_total", {"store": "redis"}) or 0.0


async def refused(limiter: RateLimiter, key: str = "team", limit: RateLimit = LIMIT) -> Overloaded:
    with pytest.raises(Overloaded) as info:
        await limiter.check(key, limit)
    return info.value


# --- counting ---------------------------------------------------------------------------------------


async def test_exactly_the_limit_passes_then_retry_after_counts_down_to_the_reset():
    clock = Clock()
    limiter = RateLimiter(EmbeddedStore(":memory:", clock=clock), clock=clock)
    for _ in range(3):
        await limiter.check("team", LIMIT)
    err = await refused(limiter)
    assert (err.status_code, err.code, err.headers) == (429, "rate_limited", {"retry-after": "60"})
    clock.now += 59.2
    assert (await refused(limiter)).headers == {"retry-after": "1"}  # rounded up, never 0
    clock.now += 0.8
    for _ in range(3):  # a new window
        await limiter.check("team", LIMIT)
    await refused(limiter)


async def test_refused_calls_do_not_extend_the_window():
    clock = Clock()
    limiter = RateLimiter(EmbeddedStore(":memory:", clock=clock), clock=clock)
    for _ in range(3):
        await limiter.check("team", LIMIT)
    for _ in range(10):
        clock.now += 5
        await refused(limiter)
    clock.now += 10  # 60 s after the first call
    await limiter.check("team", LIMIT)


async def test_keys_and_limits_are_counted_apart():
    clock = Clock()
    limiter = RateLimiter(EmbeddedStore(":memory:", clock=clock), clock=clock)
    for _ in range(3):
        await limiter.check("team-a", LIMIT)
    await refused(limiter, "team-a")
    await limiter.check("team-b", LIMIT)
    # A changed limit (a reloaded config) is a new counter; the unchanged one keeps its count.
    await limiter.check("team-a", RateLimit("three-per-minute", 4, 60.0))
    await refused(limiter, "team-a")
    assert counter_key("team-a", LIMIT) != counter_key("team-a", RateLimit("x", 3, 30.0))


async def test_processes_sharing_one_file_share_one_count(tmp_path):
    clock = Clock()
    path = tmp_path / "limits.sqlite3"
    EmbeddedStore.initialize(path).close()
    workers = [RateLimiter(EmbeddedStore(path, clock=clock), clock=clock) for _ in range(3)]
    passed = 0
    for i in range(20):
        try:
            await workers[i % 3].check("team", RateLimit("five", 5, 60.0))
            passed += 1
        except Overloaded:
            pass
    assert passed == 5
    for worker in workers:
        await worker.close()


async def test_a_reopened_store_keeps_open_windows_and_drops_ended_ones(tmp_path):
    clock = Clock()
    path = tmp_path / "limits.sqlite3"
    store = EmbeddedStore(path, clock=clock)
    assert await store.hit("a", 60) == (1, 60)
    assert await store.hit("b", 10) == (1, 10)
    await store.close()
    clock.now += 30
    store = EmbeddedStore(path, clock=clock)
    assert await store.hit("a", 60) == (2, 30)
    assert await store.hit("b", 10) == (1, 10)
    await store.close()


async def test_a_store_without_a_file_counts_in_memory_and_writes_nothing(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    store = EmbeddedStore()
    assert await store.hit("a", 1) == (1, pytest.approx(1, abs=0.1))
    assert await store.hit("a", 1) == (2, pytest.approx(1, abs=0.1))
    await store.close()
    assert store.path == ":memory:" and list(tmp_path.iterdir()) == []


def test_the_store_file_of_a_state_directory(tmp_path):
    assert EmbeddedStore.path_in(tmp_path) == tmp_path / "rate-limits.sqlite3"


async def test_contended_write_waits_off_the_event_loop(tmp_path):
    """While another connection holds the write lock, a hit waits on the store's thread (the loop
    attempt never waits) and counts once the lock is free."""
    import asyncio
    import sqlite3

    path = tmp_path / "limits.sqlite3"
    store = EmbeddedStore(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    hit = asyncio.ensure_future(store.hit("a", 60))
    for _ in range(5):
        await asyncio.sleep(0)  # the loop is free while the hit waits
    assert not hit.done()
    holder.execute("COMMIT")
    assert (await hit)[0] == 1
    holder.close()
    await store.close()


# --- when the store fails ---------------------------------------------------------------------------


async def test_fail_open_counts_per_process_warns_once_a_minute_and_recovers(caplog):
    clock = Clock()
    store = FlakyStore(clock, secret="s3cret-redis-pw")
    limiter = RateLimiter(store, clock=clock)
    await limiter.check("team", LIMIT)
    assert limiter.state == "ok"
    errors = store_errors()
    store.down = True
    caplog.set_level(logging.WARNING, "service.infra.limits")
    # The store said 1; locally this process starts its own window: 3 more pass, then 429.
    for _ in range(3):
        await limiter.check("team", LIMIT)
    await refused(limiter)
    assert limiter.state == "degraded"
    assert store.calls == 2, "within the pause after an error the store is not asked again"
    assert store_errors() == errors + 1
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "counting per process" in warnings[0].getMessage()
    clock.now += 1.0  # the pause is over: the store is tried again, fails again, no new warning
    await refused(limiter)
    assert store.calls == 3 and store_errors() == errors + 2
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1
    clock.now += 60
    await limiter.check("team", LIMIT)  # local window over; the store is still down: a second warning
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 2
    assert "s3cret-redis-pw" not in caplog.text and "***" in caplog.text
    store.down = False
    clock.now += 1.0
    await limiter.check("team", LIMIT)  # shared counting again (a new window there too)
    assert limiter.state == "ok"
    assert store.calls == 5


async def test_deny_refuses_limited_calls_with_503_until_the_store_answers():
    clock = Clock()
    store = FlakyStore(clock)
    limiter = RateLimiter(store, "deny", clock=clock)
    store.down = True
    for _ in range(2):
        with pytest.raises(UpstreamUnavailable) as info:
            await limiter.check("team", LIMIT)
        assert (info.value.status_code, info.value.code) == (503, "rate_limit_store_unavailable")
    store.down = False
    assert await limiter.health() == "ok"  # a health check that reaches the store ends the pause
    await limiter.check("team", LIMIT)


class HungStore(FlakyStore):
    """A store whose answers wait until the test lets them go (a paused Redis), then fail."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock)
        self.release = asyncio.Event()

    async def hit(self, key: str, window_s: float) -> tuple[int, float]:
        self.calls += 1
        await self.release.wait()
        raise TimeoutError()

    async def ping(self) -> None:
        self.calls += 1
        await self.release.wait()
        raise TimeoutError()


async def test_a_hung_store_is_asked_by_one_call_per_pause_while_the_others_go_on(caplog):
    caplog.set_level(logging.WARNING, "service.infra.limits")
    clock = Clock()
    store = HungStore(clock)
    limiter = RateLimiter(store, clock=clock)
    errors = store_errors()
    # The calls already in flight when the store hangs wait for it (its timeout), once.
    first = [asyncio.create_task(limiter.check(f"k{i}", LIMIT)) for i in range(5)]
    await asyncio.sleep(0)
    store.release.set()
    await asyncio.gather(*first)
    assert store.calls == 5 and store_errors() == errors + 5
    store.release.clear()
    # Within the pause nobody asks it.
    await asyncio.gather(*(limiter.check(f"k{i}", LIMIT) for i in range(20)))
    assert store.calls == 5
    clock.now += 1.0
    # After it: one call (the probe) asks and waits; the others answer at once, without it, and
    # so does /health (it does not ask a store that a call is already asking).
    probe = asyncio.create_task(limiter.check("probe", LIMIT))
    await asyncio.sleep(0)
    await asyncio.gather(*(limiter.check(f"k{i}", LIMIT) for i in range(20)))
    assert await limiter.health() == "degraded"
    assert not probe.done() and store.calls == 6
    store.release.set()
    await probe
    assert store.calls == 6 and store_errors() == errors + 6
    assert len(caplog.records) == 1  # one warning a minute, however many failures


async def test_health_reports_a_store_that_stopped_answering():
    clock = Clock()
    store = FlakyStore(clock)
    limiter = RateLimiter(store, clock=clock)
    assert await limiter.health() == "ok"
    store.down = True
    assert await limiter.health() == "degraded"


def test_redis_store_redacts_its_url_and_password():
    store = RedisStore("rediss://user:pa55word-xyz@cache.internal:6380/2")
    assert store.address == "rediss://cache.internal:6380/2"
    text = store.redact("AuthenticationError for rediss://user:pa55word-xyz@cache.internal:6380/2 pa55word-xyz")
    assert "pa55word-xyz" not in text
    assert "pa55word" not in repr(store)


# --- who touches the store ----------------------------------------------------------------------------


def _config(**governance) -> dict:
    return {
        "providers": {"openai": {"keys": [{"name": "k", "value": "sk-x", "use_for_batch_api": True}]}},
        "governance": {
            "rate_limits": [{"id": "five", "request_max_limit": 5, "request_reset_duration": "1m"}],
            "virtual_keys": [
                {
                    "id": "limited",
                    "value": "sk-bf-limited",
                    "rate_limit_id": "five",
                    "provider_configs": [{"provider": "openai"}],
                },
                {"id": "free", "value": "sk-bf-free", "provider_configs": [{"provider": "openai"}]},
            ],
            **governance,
        },
    }


async def test_only_limited_virtual_keys_touch_the_store():
    clock = Clock()
    store = FlakyStore(clock)
    auth = Authenticator(parse_config(_config(), env={}), limiter=RateLimiter(store, clock=clock))
    for headers in ({"x-bf-vk": "sk-bf-free"}, {}, {"authorization": "Bearer sk-provider-own"}):
        await auth.authorize(auth.authenticate(headers), "openai")
    assert store.calls == 0
    await auth.authorize(auth.authenticate({"x-bf-vk": "sk-bf-limited"}), "openai")
    assert store.calls == 1
    await auth.authorize(Caller("admin"), "openai")
    assert store.calls == 1


@pytest.mark.parametrize("batch_id", ["../x", "a/b", "", "b" * 600])
async def test_a_call_refused_for_its_id_spends_none_of_the_rate_limit(batch_id):
    clock = Clock()
    store = FlakyStore(clock)
    canceller = RuntimeFactory(RateLimiter(store, clock=clock)).build(parse_config(_config(), env={}), "v").canceller
    caller = canceller.auth.authenticate({"x-bf-vk": "sk-bf-limited"})
    with pytest.raises(InvalidRequest):
        await canceller.target(caller, "openai", batch_id)
    assert store.calls == 0
    await canceller.target(caller, "openai", "batch_fine")
    assert store.calls == 1


async def test_authenticators_rebuilt_from_a_config_share_the_process_limiter():
    clock = Clock()
    limiter = RateLimiter(EmbeddedStore(":memory:", clock=clock), clock=clock)
    config = parse_config(_config(), env={})
    caller = {"x-bf-vk": "sk-bf-limited"}
    for _ in range(3):
        auth = Authenticator(config, limiter=limiter)
        await auth.authorize(auth.authenticate(caller), "openai")
    reloaded = Authenticator(parse_config(_config(), env={}), limiter=limiter)
    for _ in range(2):
        await reloaded.authorize(reloaded.authenticate(caller), "openai")
    with pytest.raises(Overloaded):
        await reloaded.authorize(reloaded.authenticate(caller), "openai")


# --- governance.store config ------------------------------------------------------------------------


def test_store_defaults_to_embedded_fail_open():
    assert parse_config(_config(), env={}).store == StoreConfig()


def test_redis_store_from_env_with_deny_and_timeout():
    env = {"LIMITS_REDIS": "rediss://:pw@redis.example:6380/1"}
    store = parse_config(
        _config(store={"type": "redis", "url": "env.LIMITS_REDIS", "on_error": "deny", "timeout_ms": 100}), env=env
    ).store
    assert (store.type, store.url, store.on_error, store.timeout_s) == ("redis", env["LIMITS_REDIS"], "deny", 0.1)
    assert "pw" not in repr(store)


@pytest.mark.parametrize(
    ("store", "message"),
    [
        ({"type": "memcached"}, "governance.store.type: expected embedded or redis"),
        ({"type": "redis"}, "governance.store.url: must not be empty"),
        ({"type": "redis", "url": "http://:hunter2@h:6379"}, "governance.store.url: must be a redis:// or rediss://"),
        ({"type": "redis", "url": "redis://:hunter2@h:port"}, "governance.store.url: the port is not a number"),
        ({"type": "redis", "url": "redis://:hunter2@h:6379/x"}, "governance.store.url: the path must be a database"),
        ({"type": "redis", "url": "env.NOPE"}, "governance.store.url: environment variable NOPE is not set"),
        ({"url": "redis://:hunter2@h"}, "governance.store.url: only used with type redis"),
        ({"type": "redis", "url": "redis://h", "on_error": "maybe"}, "governance.store.on_error: expected allow"),
        ({"type": "redis", "url": "redis://h", "timeout_ms": 0}, "governance.store.timeout_ms: must be between"),
        ({"type": "redis", "url": "redis://h", "timeout_ms": "1s"}, "governance.store.timeout_ms: expected an integer"),
        ("redis", "governance.store: expected an object"),
    ],
)
def test_bad_store_config_names_the_field_and_never_the_url(store, message):
    with pytest.raises(ConfigError) as info:
        parse_config(_config(store=store), env={})
    assert str(info.value).startswith(message)
    assert "hunter2" not in str(info.value)
