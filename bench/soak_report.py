"""The fault soak's markdown report (bench/results/soak-faults.md): totals, the answers by status and
error code, retries per fault type read off the simulators' recorded calls, and service RSS samples."""

from __future__ import annotations

import datetime as dt
import os
import platform
import subprocess
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import percentile
from bench.soak_plan import CLIENT_TIMEOUT_S, CONTROL, DEADLINE_S, PLANS, RSS_GROWTH_LIMIT

if TYPE_CHECKING:
    from bench.soak import Soak


def report(soak: Soak, elapsed: float) -> tuple[str, bool]:
    """The markdown report and whether the soak passed (no request lost, no crash, RSS growth under the limit)."""
    t = soak.tally
    lost = t.timeouts + sum(t.conn_errors.values())
    rss_start = soak.rss[0][1] if soak.rss else 0
    rss_mid = min(soak.rss, key=lambda s: abs(s[0] - elapsed / 2))[1] if soak.rss else 0
    rss_end = soak.rss[-1][1] if soak.rss else 0
    growth = (rss_end - rss_start) / rss_start if rss_start else 0.0
    ok = lost == 0 and not soak.crashes and growth < RSS_GROWTH_LIMIT and t.sent == t.answered
    lat = sorted(t.latencies)

    def pct(p: float) -> str:
        return f"{percentile(lat, p) * 1000:.0f}" if lat else "-"

    lines = [
        "# batchgate soak under mixed upstream faults",
        "",
        f"`python -m bench.soak --seconds {soak.args.seconds:g} --concurrency {soak.args.concurrency}` "
        f"(max {soak.args.max_requests:,} requests), {_commit()}{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M UTC}, "
        f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}.",
        "",
        "Sandbox-mode gateway (simulators + service + Envoy on loopback), REST cancels through Envoy from an "
        f"aiohttp client (per-request timeout {CLIENT_TIMEOUT_S:g} s), network config: deadline {DEADLINE_S:g} s, "
        "max_retries 2, backoff 50-500 ms. Faults injected through the sandbox admin API at a fixed rate, one "
        "fault type per provider; `anthropic` is the fault-free control.",
        "",
        "## Totals",
        "",
        "| | |",
        "|--|--:|",
        f"| run time | {elapsed:.1f} s |",
        f"| requests sent | {t.sent:,} |",
        f"| answered | {t.answered:,} |",
        f"| lost (timeouts + connection errors) | {lost} ({t.timeouts} timeouts, "
        f"{sum(t.conn_errors.values())} connection errors"
        f"{': ' + str(dict(t.conn_errors)) if t.conn_errors else ''}) |",
        f"| throughput | {t.answered / elapsed:.0f} req/s |",
        f"| latency p50 / p99 / max | {pct(50)} / {pct(99)} / {pct(100)} ms |",
        f"| service process crashes | {len(soak.crashes)}{' ' + str(soak.crashes) if soak.crashes else ''} |",
        f"| service RSS start (after warm-up {soak.warm_rss / 1024:.1f} MiB) / middle / end | "
        f"{rss_start / 1024:.1f} / {rss_mid / 1024:.1f} / {rss_end / 1024:.1f} MiB ({growth:+.1%}) |",
        f"| upstream calls recorded | {sum(len(v) for v in soak.calls.values()):,}"
        f"{' (some evicted before read: retry counts are lower bounds)' if soak.calls_gap else ''} |",
        "",
        "## Answers",
        "",
        "| HTTP status | error code | count |",
        "|--:|--|--:|",
    ]
    for (status, code), n in sorted(t.statuses.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        lines.append(f"| {status} | {code or '-'} | {n:,} |")
    lines += [
        "",
        "## Retries per fault type",
        "",
        "Upstream attempts are the simulators' recorded calls grouped by batch id (every request has a fresh "
        "one); retries = attempts beyond the first.",
        "",
        "| provider | fault | faults injected | consumed | requests | upstream attempts | retries | "
        "requests retried | answers | expected |",
        "|--|--|--:|--:|--:|--:|--:|--:|--|--|",
    ]
    requests_by_provider = Counter(t.ids.values())
    rows = [(p.provider, p.kind, soak.faults_injected[p.provider], p.expectation) for p in PLANS]
    rows.append((CONTROL, "none (control)", 0, "no retries"))
    for provider, kind, injected, expectation in rows:
        attempts = [
            sum(1 for prov, method, _ in soak.calls.get(bid, ()) if prov == provider and method == "POST")
            for bid, p in t.ids.items()
            if p == provider
        ]
        total_attempts = sum(attempts)
        retries = sum(a - 1 for a in attempts if a > 1)
        retried = sum(1 for a in attempts if a > 1)
        consumed = injected - soak.pending.get(provider, 0) if injected else 0
        answers = ", ".join(
            f"{status}{'/' + code if code else ''}: {n}"
            for (status, code), n in sorted(t.per_provider[provider].items(), key=lambda kv: -kv[1])
        )
        lines.append(
            f"| {provider} | {kind} | {injected} | {consumed} | {requests_by_provider[provider]:,} | "
            f"{total_attempts:,} | {retries} | {retried} | {answers} | {expectation} |"
        )
    lines += ["", "## Service RSS samples", "", "| t (s) | RSS MiB |", "|--:|--:|"]
    lines += [f"| {at:.0f} | {kib / 1024:.1f} |" for at, kib in soak.rss]
    lines += [
        "",
        f"**{'PASS' if ok else 'FAIL'}**: lost {lost} (must be 0), crashes {len(soak.crashes)} (must be 0), "
        f"every request answered: {t.sent == t.answered}, RSS growth {growth:+.1%} "
        f"(limit {RSS_GROWTH_LIMIT:.0%}).",
        "",
    ]
    return "\n".join(lines), ok


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
    except OSError:
        return ""
    return f"commit {out.stdout.strip()}, " if out.returncode == 0 else ""
