"""Virtual-key rate limits that hold across workers and stacks (issue 11), end to end.

Three gateways share the session sandbox (`stack.sandbox_url`):

* `embedded`: three service workers counting in the embedded store (one SQLite file the launcher
  creates), as `make run` does.
* `allow` and `deny`: one worker each, both counting in ONE real redis-server (password in the URL,
  given as `env.LIMITS_REDIS_URL`); `deny` has `on_error: deny`.

Every test uses its own virtual key, so counts never leak between tests. The redis-server is
stopped and started again in the middle of the outage test; the last test searches every log line,
/metrics page, /health answer and launcher description for the Redis password.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import requests

from gateway.stack import Stack, free_port, free_ports
from sandbox.server import gateway_config
from service.gen.batchgate.v1 import batchgate_pb2 as pb
from service.gen.batchgate.v1 import batchgate_pb2_grpc as pb_grpc
from tests.conftest import RedisServer
from tests.e2e.conftest import SimAdmin

LIMIT = 5
KEYS = ("rest", "grpc", "window", "shared", "outage", "errors")
VK = {name: f"sk-bf-e2e-limits-{name}-{uuid.uuid4().hex[:12]}" for name in (*KEYS, "open")}
SEEN: list[str] = []


def config(sandbox_url: str, store: dict | None = None) -> dict:
    cfg = gateway_config(sandbox_url)
    every = [{"provider": "openai"}]
    cfg["governance"] = {
        "rate_limits": [
            {"id": "five-per-minute", "request_max_limit": LIMIT, "request_reset_duration": "1m"},
            {"id": "two-per-2s", "request_max_limit": 2, "request_reset_duration": "2s"},
        ],
        "virtual_keys": [
            *(
                {
                    "id": name,
                    "value": VK[name],
                    "provider_configs": every,
                    "rate_limit_id": "two-per-2s" if name == "window" else "five-per-minute",
                }
                for name in KEYS
            ),
            {"id": "open", "value": VK["open"], "provider_configs": every},
        ],
    }
    if store is not None:
        cfg["governance"]["store"] = store
    return cfg


def new_stack(cfg: dict, directory: Path, workers: int, env: dict[str, str] | None = None) -> Stack:
    path = directory / "config.json"
    path.write_text(json.dumps(cfg, indent=2))
    return Stack(
        config=path,
        http_port=free_port(),
        grpc_port=free_port(),
        admin_port=free_port(),
        metrics_port=free_ports(workers),
        log_dir=directory / "logs",
        workers=workers,
        env={"DRAIN_DELAY_SECONDS": "0", "LOG_LEVEL": "DEBUG", **(env or {})},
    )


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("limits-redis")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def embedded(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    gateway = new_stack(config(stack.sandbox_url), tmp_path_factory.mktemp("limits-embedded"), workers=3)
    with gateway:
        yield gateway


def _redis_stack(stack: Stack, redis: RedisServer, directory: Path, on_error: str) -> Stack:
    store = {"type": "redis", "url": "env.LIMITS_REDIS_URL", "on_error": on_error}
    return new_stack(config(stack.sandbox_url, store), directory, workers=1, env={"LIMITS_REDIS_URL": redis.url})


@pytest.fixture(scope="module")
def allow(stack: Stack, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _redis_stack(stack, redis, tmp_path_factory.mktemp("limits-allow"), "allow") as gateway:
        yield gateway


@pytest.fixture(scope="module")
def deny(stack: Stack, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with _redis_stack(stack, redis, tmp_path_factory.mktemp("limits-deny"), "deny") as gateway:
        yield gateway


def rest_cancel(gateway: Stack, sim: SimAdmin, key: str) -> requests.Response:
    batch = sim.seed("openai")
    resp = requests.post(
        f"{gateway.http_url}/v1/batches/{batch}/cancel?provider=openai", headers={"x-bf-vk": VK[key]}, timeout=10
    )
    SEEN.append(f"{resp.status_code} {dict(resp.headers)} {resp.text}")
    return resp


def grpc_cancel(gateway: Stack, sim: SimAdmin, key: str) -> tuple[grpc.StatusCode, dict[str, str]]:
    """One call on a connection of its own to the service port: the kernel spreads connections over
    the workers (SO_REUSEPORT)."""
    batch = sim.seed("openai")
    with grpc.insecure_channel(f"127.0.0.1:{gateway.grpc_port}") as channel:
        call = pb_grpc.BatchServiceStub(channel).Cancel.with_call
        try:
            _, info = call(
                pb.CancelBatchRequest(batch_id=batch, provider="openai"), metadata=(("x-bf-vk", VK[key]),), timeout=10
            )
            return grpc.StatusCode.OK, dict(info.initial_metadata())
        except grpc.RpcError as err:
            SEEN.append(f"{err.code()} {err.details()}")
            return err.code(), dict(err.initial_metadata())


def statuses(responses: list[requests.Response]) -> dict[int, int]:
    out: dict[int, int] = {}
    for resp in responses:
        out[resp.status_code] = out.get(resp.status_code, 0) + 1
    return out


def health(gateway: Stack) -> dict:
    resp = requests.get(f"{gateway.http_url}/health", timeout=10)
    SEEN.append(resp.text)
    assert resp.status_code == 200, resp.text
    return resp.json()


# --- one machine: three workers, the embedded store --------------------------------------------------


def test_three_workers_let_exactly_five_of_twenty_through_rest(embedded: Stack, sim: SimAdmin) -> None:
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: rest_cancel(embedded, sim, "rest"), range(20)))
    assert statuses(responses) == {200: 5, 429: 15}
    for resp in responses:
        if resp.status_code == 429:
            assert resp.json()["error"]["code"] == "rate_limited"
            assert 1 <= int(resp.headers["retry-after"]) <= 60
    assert workers_that_answered(embedded) >= 2, "the calls did not spread over the workers"


def workers_that_answered(gateway: Stack) -> int:
    """Workers whose /metrics count at least one answered cancel."""
    answered = 0
    for i in range(gateway.workers):
        page = requests.get(f"http://127.0.0.1:{gateway.metrics_port + i}/metrics", timeout=10).text
        answered += any(
            line.startswith("batchgate_requests_total{") and float(line.split()[-1]) > 0 for line in page.splitlines()
        )
    return answered


def test_three_workers_let_exactly_five_of_twenty_through_direct_grpc(embedded: Stack, sim: SimAdmin) -> None:
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda _: grpc_cancel(embedded, sim, "grpc"), range(20)))
    codes = [code for code, _ in results]
    assert codes.count(grpc.StatusCode.OK) == 5
    assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) == 15
    assert all(1 <= int(meta["retry-after"]) <= 60 for code, meta in results if code != grpc.StatusCode.OK)
    assert workers_that_answered(embedded) == 3


def test_the_window_resets_after_retry_after(embedded: Stack, sim: SimAdmin) -> None:
    first = [rest_cancel(embedded, sim, "window") for _ in range(3)]
    assert [r.status_code for r in first] == [200, 200, 429]
    wait = int(first[2].headers["retry-after"])
    assert 1 <= wait <= 2
    time.sleep(wait + 0.1)
    assert [rest_cancel(embedded, sim, "window").status_code for _ in range(3)] == [200, 200, 429]


def test_keys_without_a_limit_are_not_limited(embedded: Stack, sim: SimAdmin) -> None:
    assert {rest_cancel(embedded, sim, "open").status_code for _ in range(LIMIT + 3)} == {200}


def test_health_shows_the_embedded_store(embedded: Stack) -> None:
    assert health(embedded)["rate_limit_store"] == {"type": "embedded", "state": "ok"}
    assert embedded.rate_limit_store.endswith("rate-limits.sqlite3")


# --- across machines: two stacks, one Redis -------------------------------------------------------------


def test_two_stacks_on_one_redis_let_five_through_in_total(allow: Stack, deny: Stack, sim: SimAdmin) -> None:
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda i: rest_cancel((allow, deny)[i % 2], sim, "shared"), range(20)))
    assert statuses(responses) == {200: 5, 429: 15}
    assert health(allow)["rate_limit_store"] == {"type": "redis", "state": "ok"}


def test_redis_outage_fails_open_or_denies_and_counting_resumes(
    allow: Stack, deny: Stack, redis: RedisServer, sim: SimAdmin
) -> None:
    assert [rest_cancel(allow, sim, "outage").status_code for _ in range(2)] == [200, 200]
    redis.stop()
    try:
        # allow: counted in the one worker from a fresh local window, so 5 more pass, then 429.
        assert statuses([rest_cancel(allow, sim, "outage") for _ in range(7)]) == {200: 5, 429: 2}
        assert health(allow)["rate_limit_store"] == {"type": "redis", "state": "degraded"}
        # deny: limited calls refused with 503; calls without a limit go on.
        refused = rest_cancel(deny, sim, "outage")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "rate_limit_store_unavailable"
        assert rest_cancel(deny, sim, "open").status_code == 200
        assert health(deny)["rate_limit_store"]["state"] == "degraded"
    finally:
        redis.start()
    # Back without a restart (health asks the store; a limited call would too, after a 1 s pause).
    assert health(allow)["rate_limit_store"]["state"] == "ok"
    assert health(deny)["rate_limit_store"]["state"] == "ok"
    # Redis restarted empty: one new shared window across both stacks.
    responses = [rest_cancel((allow, deny)[i % 2], sim, "outage") for i in range(8)]
    assert statuses(responses) == {200: 5, 429: 3}


def redis_errors(gateway: Stack) -> float:
    """batchgate_rate_limit_store_errors_total{store="redis"} of the gateway's one worker."""
    page = requests.get(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).text
    (line,) = [
        line for line in page.splitlines() if line.startswith('batchgate_rate_limit_store_errors_total{store="redis"}')
    ]
    return float(line.split()[-1])


def test_store_errors_are_counted_and_the_redis_password_appears_nowhere(
    allow: Stack, deny: Stack, embedded: Stack, redis: RedisServer, sim: SimAdmin
) -> None:
    """Stands alone: makes an outage of its own (a limited call on each Redis stack while
    redis-server is down), checks each store error was counted, then searches every /metrics page,
    the gateways' logs and every answer it got for the Redis password."""
    SEEN.clear()
    assert [health(gateway)["rate_limit_store"]["state"] for gateway in (allow, deny)] == ["ok", "ok"]
    before = [redis_errors(gateway) for gateway in (allow, deny)]
    redis.stop()
    try:
        assert rest_cancel(allow, sim, "errors").status_code == 200  # allow: counted in the worker
        refused = rest_cancel(deny, sim, "errors")
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "rate_limit_store_unavailable")
    finally:
        redis.start()
    added = [redis_errors(gateway) - counted for gateway, counted in zip((allow, deny), before, strict=True)]
    assert all(count >= 1 for count in added), added
    assert [health(gateway)["rate_limit_store"]["state"] for gateway in (allow, deny)] == ["ok", "ok"]
    pages = [
        requests.get(f"http://127.0.0.1:{gateway.metrics_port + i}/metrics", timeout=10).text
        for gateway in (allow, deny, embedded)
        for i in range(gateway.workers)
    ]
    assert redis.password not in allow.rate_limit_store and allow.rate_limit_store.startswith("redis://127.0.0.1:")
    # The whole logs: a worker warns about a failing store at most once a minute, so the warning
    # is this test's when it runs alone, or an earlier outage's of the same minute.
    logs = [path.read_text(errors="replace") for gateway in (allow, deny) for path in gateway.log_dir.glob("*.log")]
    assert any("rate limit store redis failed" in text for text in logs), "no outage warning logged"
    assert len(SEEN) == 6  # both answers and four health answers
    assert [where for where, text in enumerate((*pages, *logs, *SEEN)) if redis.password in text] == []
