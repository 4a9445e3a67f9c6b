"""The cost of a virtual-key rate limit (issue 11), REST via Envoy with `x-bf-vk`:

    rest_vk_open      a virtual key without a limit (the store is never touched): the reference
    rest_vk_embedded  a limited key (a limit far too high to trigger), embedded SQLite store
    rest_vk_open_redis, rest_vk_redis
                      the same two on a second gateway whose store is a local redis-server (started
                      by the harness with a password; skipped when redis-server is not installed)

The limit check's cost is rest_vk_embedded minus rest_vk_open, and rest_vk_redis minus
rest_vk_open_redis (each against the same gateway), at the same percentile.
Because one sequential run per path cannot resolve a fraction of a millisecond on a shared machine
whose background load drifts, the verdict comes from interleaved rounds at c=1 (open, open again,
embedded, Redis, N requests each per round, in an order that rotates; the median over rounds of each
round's p50 difference, with the open-against-open difference as the noise floor), next to the check
alone timed in-process (RateLimiter.check against each store, p50/p99).
"""

from __future__ import annotations

import asyncio
import copy
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import percentile
from bench.load import LoadClient
from bench.paths import targets
from bench.report import TARGET_LIMIT_C1_P50_MS
from bench.system import System


def limit_check_cost(client: LoadClient, system: System, rounds: int, n: int) -> list[str]:
    """Lines (verdicts first) on what a rate-limit check adds; see the module docstring. The order of
    the paths rotates from round to round (whatever runs first or last in a round is not favoured),
    and the key without a limit runs twice per round: the difference between those two (an A/A
    pair) is the noise floor the other differences stand against."""
    by_name = {t.name: t for t in targets(system)}
    again = copy.copy(by_name["rest_vk_open"])
    again.name = "rest_vk_open_again"
    by_name[again.name] = again
    names = [
        name
        for name in ("rest_vk_open", again.name, "rest_vk_embedded", "rest_vk_open_redis", "rest_vk_redis")
        if name in by_name
    ]
    p50s: dict[str, list[float]] = {name: [] for name in names}
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            p50s[name].append(percentile(client.run(by_name[name], 1, n).latencies_ms, 50))

    def added(name: str, reference: str = "rest_vk_open") -> float:
        return statistics.median(a - b for a, b in zip(p50s[name], p50s[reference], strict=True))

    lines = []
    # Each limited key against a key without a limit on the same gateway.
    for name, reference, store in (
        ("rest_vk_embedded", "rest_vk_open", "embedded"),
        ("rest_vk_redis", "rest_vk_open_redis", "Redis"),
    ):
        if name not in p50s:
            lines.append(f"n/a   rate-limit check, {store} store: not measured (no redis-server)")
            continue
        value = added(name, reference)
        verdict = "PASS" if value <= TARGET_LIMIT_C1_P50_MS else "MISS"
        lines.append(
            f"{verdict}  rate-limit check, {store} store: REST via Envoy c=1 p50 {value:+.3f} ms over the "
            f"same call by a key without a limit (median of {rounds} rounds of {n}; target <= "
            f"{TARGET_LIMIT_C1_P50_MS} ms)"
        )
    lines.append(f"      noise floor: the key without a limit against itself {added(again.name):+.3f} ms")
    for name in names:
        values = ", ".join(f"{v:.2f}" for v in p50s[name])
        lines.append(f"      {name} p50 per round (ms): {values}")
    for store, (p50, p99) in asyncio.run(_check_in_process(system.redis_url)).items():
        lines.append(f"      in-process RateLimiter.check, {store} store: p50 {p50:.0f} us, p99 {p99:.0f} us")
    return lines


async def _check_in_process(redis_url: str, n: int = 3000) -> dict[str, tuple[float, float]]:
    from service.config.governance import RateLimit
    from service.infra.limits import EmbeddedStore, RateLimiter, RedisStore

    limit = RateLimit("bench", 1_000_000_000, 3600.0)
    out = {}
    with tempfile.TemporaryDirectory(prefix="batchgate-bench-limits-") as tmp:
        stores = {"embedded": EmbeddedStore(Path(tmp) / "rate-limits.sqlite3")}
        if redis_url:
            stores["redis"] = RedisStore(redis_url)
        for name, store in stores.items():
            limiter = RateLimiter(store)
            for _ in range(300):
                await limiter.check("bench-in-process", limit)
            times = []
            for _ in range(n):
                started = time.perf_counter()
                await limiter.check("bench-in-process", limit)
                times.append((time.perf_counter() - started) * 1e6)
            await limiter.close()
            times.sort()
            out[name] = (times[n // 2], times[int(n * 0.99)])
    return out
