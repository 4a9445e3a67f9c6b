"""The benchmark's report: the results table, the targets as PASS/MISS lines (reported, never
enforced), RSS and CPU-per-request lines, the machine description and the markdown files.

Reported per path and concurrency: requests, errors, req/s, p50/p90/p99 (client-side, every request),
overhead = path minus baseline at the same percentile and concurrency, and CPU per request of the
service, Envoy, simulator and load generator (utime+stime from /proc across the measured run). Service
RSS (VmRSS, summed over service processes) before the first and after the last request.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import re
from pathlib import Path

from bench.common import load_average
from bench.install import tool_version
from bench.load import LoadClient, Run

# Targets of issue 7 (reported, never enforced).
TARGET_REST_C1_P50_MS = 0.8
TARGET_REST_C1_P99_MS = 3.0
TARGET_GRPC_C1_P50_MS = 0.5
TARGET_REST_C64_RPS = 2500
TARGET_REST_C64_P99_MS = 60.0
TARGET_RSS_GROWTH = 0.10
# Issue 11: what a rate-limit check may add over the same call by a key without a limit.
TARGET_LIMIT_C1_P50_MS = 0.3
# Issue 25: the gateway against the reference servicer that makes the same aiohttp call (same run).
TARGET_FLOOR_CPU_RATIO = 1.25
TARGET_FLOOR_OWN_SHARE = 0.15
TARGET_FLOOR_RPS_RATIO = 0.85
# Rows that do not go through the gateway: the baseline itself and the reference servicers; of
# those, the REST ones have an overhead column (the least any REST path could add here).
NOT_GATEWAY = ("baseline", "grpc_floor", "grpc_floor_upstream", "rest_floor", "rest_floor_upstream")
_WITH_OVERHEAD = ("rest_floor", "rest_floor_upstream")


def fmt(value: float, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def results_table(runs: list[Run], labels: dict[str, str]) -> str:
    base = {r.c: r for r in runs if r.target == "baseline"}
    lines = [
        "| path | c | requests | errors | req/s | p50 ms | p90 ms | p99 ms | overhead p50 ms | overhead p99 ms "
        "| service CPU us/req | Envoy CPU us/req | sim CPU us/req | client CPU us/req |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in runs:
        b = base.get(r.c)
        no_overhead = (r.target in NOT_GATEWAY and r.target not in _WITH_OVERHEAD) or b is None
        over50 = "-" if no_overhead else fmt(r.pct(50) - b.pct(50))
        over99 = "-" if no_overhead else fmt(r.pct(99) - b.pct(99))
        lines.append(
            f"| {labels[r.target]} | {r.c} | {r.n} | {r.result.errors} | {r.rps:.0f} | {fmt(r.pct(50))} "
            f"| {fmt(r.pct(90))} | {fmt(r.pct(99))} | {over50} | {over99} | {fmt(r.cpu_us_per_req('service'), 0)} "
            f"| {fmt(r.cpu_us_per_req('envoy'), 0)} | {fmt(r.cpu_us_per_req('sim'), 0)} "
            f"| {fmt(r.cpu_us_per_req('client'), 0)} |"
        )
    return "\n".join(lines)


def evaluate_targets(runs: list[Run], high_c: int, rss_growth: float | None) -> list[str]:
    by = {(r.target, r.c): r for r in runs}

    def over(path: str, c: int, p: float) -> float:
        if (path, c) not in by or ("baseline", c) not in by:
            return math.nan
        return by[(path, c)].pct(p) - by[("baseline", c)].pct(p)

    def verdict(ok: bool | None) -> str:
        return "n/a " if ok is None else ("PASS" if ok else "MISS")

    out = []
    value = over("rest_envoy", 1, 50)
    out.append(
        f"{verdict(None if math.isnan(value) else value <= TARGET_REST_C1_P50_MS)}  REST via Envoy c=1 p50 "
        f"overhead {fmt(value, 3)} ms (target <= {TARGET_REST_C1_P50_MS} ms)"
    )
    value = over("rest_envoy", 1, 99)
    out.append(
        f"{verdict(None if math.isnan(value) else value <= TARGET_REST_C1_P99_MS)}  REST via Envoy c=1 p99 "
        f"overhead {fmt(value, 3)} ms (target <= {TARGET_REST_C1_P99_MS} ms)"
    )
    value = over("grpc_direct", 1, 50)
    out.append(
        f"{verdict(None if math.isnan(value) else value <= TARGET_GRPC_C1_P50_MS)}  gRPC direct c=1 p50 "
        f"overhead {fmt(value, 3)} ms (target <= {TARGET_GRPC_C1_P50_MS} ms)"
    )
    rest64 = by.get(("rest_envoy", 64))
    if rest64 is None:
        out.append(
            f"n/a   REST via Envoy c=64 (this run used c={high_c}): target >= {TARGET_REST_C64_RPS} req/s, "
            f"0 errors, p99 <= {TARGET_REST_C64_P99_MS:g} ms"
        )
    else:
        ok = (
            rest64.rps >= TARGET_REST_C64_RPS and rest64.result.errors == 0 and rest64.pct(99) <= TARGET_REST_C64_P99_MS
        )
        out.append(
            f"{verdict(ok)}  REST via Envoy c=64: {rest64.rps:.0f} req/s, {rest64.result.errors} errors, "
            f"p99 {fmt(rest64.pct(99))} ms (target >= {TARGET_REST_C64_RPS} req/s, 0 errors, "
            f"p99 <= {TARGET_REST_C64_P99_MS:g} ms)"
        )
    if rss_growth is None:
        out.append(
            "n/a   service RSS flat within 10% from 10k to 200k requests: run `python -m bench.run --rss-soak 200000`"
        )
    else:
        out.append(
            f"{verdict(abs(rss_growth) <= TARGET_RSS_GROWTH)}  service RSS from 10k requests to the end: "
            f"{rss_growth * 100:+.1f}% (target within 10%)"
        )
    return out


def rss_line(before: int, after: int, requests: int, envoy_before: int, envoy_after: int) -> str:
    return (
        f"- service RSS: {before / 1024:.1f} MiB before the first request, {after / 1024:.1f} MiB after "
        f"{requests:,} requests through the service, warm-ups included "
        f"({(after - before) / max(before, 1) * 100:+.1f}%); "
        f"Envoy RSS {envoy_before / 1024:.1f} -> {envoy_after / 1024:.1f} MiB"
    )


def cpu_lines(runs: list[Run], labels: dict[str, str], high_c: int) -> list[str]:
    """The CPU budget of REST via Envoy at the high concurrency, then CPU per request of each gateway path."""
    lines = []
    cores = len(os.sched_getaffinity(0))
    for r in runs:
        if r.c == high_c and r.target == "rest_envoy":
            parts = {g: r.cpu_us_per_req(g) for g in ("service", "envoy", "sim", "client")}
            whole, gateway = sum(parts.values()), parts["service"] + parts["envoy"]
            lines.append(
                f"- CPU budget, REST via Envoy at c={r.c}: {whole:.0f} us of CPU per request on this machine "
                f"(service+Envoy {gateway:.0f}, simulator+load generator {whole - gateway:.0f}): {cores} cores cap it "
                f"near {cores * 1e6 / whole:.0f} req/s; with the simulator and load generator elsewhere, near "
                f"{cores * 1e6 / gateway:.0f} req/s (if the service used every core)"
            )
    for r in runs:
        if r.c == high_c and r.target not in NOT_GATEWAY:
            total = r.cpu_us_per_req("service") + r.cpu_us_per_req("envoy")
            lines.append(
                f"- CPU per request at c={r.c}, {labels[r.target]}: service {fmt(r.cpu_us_per_req('service'), 0)} us + "
                f"Envoy {fmt(r.cpu_us_per_req('envoy'), 0)} us = {fmt(total, 0)} us (simulator "
                f"{fmt(r.cpu_us_per_req('sim'), 0)} us, load generator {fmt(r.cpu_us_per_req('client'), 0)} us)"
            )
    return lines


def benchmark_markdown(
    smoke: bool, table: str, summary: list[str], verdicts: list[str], info: list[str], elapsed: float
) -> list[str]:
    """results.md (smoke.md with --smoke); `summary` is the RSS line and the CPU lines."""
    title = "batchgate benchmark" + (" (smoke)" if smoke else "")
    return [
        f"# {title}",
        "",
        "Generated by `python -m bench.run" + (" --smoke" if smoke else "") + "`. Latencies are client-side (h2load "
        "per-request log), in milliseconds; overhead = path minus baseline at the same percentile and concurrency. "
        "Baseline = the provider simulator called directly (the lower bound); every path calls that same simulator "
        "process. The reference rows are a trivial grpc.aio servicer (bench/floor.py) without any upstream call "
        "(what grpc.aio alone costs here) and with one aiohttp call to the simulator (the stack without batchgate's "
        "code).",
        "",
        table,
        "",
        *summary,
        "",
        "## Targets (reported, not enforced)",
        "",
        "```",
        *verdicts,
        "```",
        "",
        "## Machine",
        "",
        *info,
        f"- measured phases took {elapsed:.1f} s; load average at end: {load_average()}",
        "",
    ]


def rss_soak_markdown(
    args: argparse.Namespace,
    rows: list[tuple[int, int, int, float, float]],
    seconds: float,
    errors: int,
    rss_start: int,
    growth: float,
    verdict: str,
    info: list[str],
) -> list[str]:
    """soak.md: rows are (requests so far, service RSS KiB, Envoy RSS KiB, req/s, p99 ms) per chunk."""
    first, done = rows[0][1], rows[-1][0]
    return [
        "# batchgate RSS soak",
        "",
        f"`python -m bench.run --rss-soak {args.rss_soak}`: REST via Envoy, c={args.concurrency}, "
        f"{args.rss_soak:,} requests in {seconds:.0f} s, {errors} errors. Service RSS "
        f"(VmRSS, all service processes) {rss_start / 1024:.1f} MiB before the first request.",
        "",
        "| requests | service RSS MiB | Envoy RSS MiB | req/s (chunk) | p99 ms (chunk) |",
        "|--:|--:|--:|--:|--:|",
        *(f"| {d:,} | {r / 1024:.1f} | {e / 1024:.1f} | {rps:.0f} | {p99:.2f} |" for d, r, e, rps, p99 in rows),
        "",
        f"- service RSS at {rows[0][0]:,} requests: {first / 1024:.1f} MiB; at {done:,}: {rows[-1][1] / 1024:.1f} MiB "
        f"({growth * 100:+.1f}%)",
        "",
        "```",
        verdict,
        "```",
        "",
        *info,
        f"- load average at end: {load_average()}",
        "",
    ]


def machine_info(client: LoadClient, args: argparse.Namespace) -> list[str]:
    import grpc

    from gateway.stack import envoy_binary
    from service.config.settings import Settings

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    envoy = envoy_binary()
    settings = Settings.from_env()
    return [
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M:%S UTC')}",
        f"- machine: {len(os.sched_getaffinity(0))} cores (nproc), {model}, {platform.platform()}",
        f"- load average at start: {load_average()} (other work on the machine makes absolute numbers noisy)",
        f"- python {platform.python_version()}, grpcio {grpc.__version__}, envoy {_envoy_version(envoy)}",
        f"- load generator: {client.name} ({client.version}), one client thread; gRPC: "
        f"c calls over min(c, {args.grpc_conns}) HTTP/2 connections; REST and baseline: HTTP/1.1, one connection per "
        "concurrent request",
        f"- service workers: {settings.workers}, Envoy --concurrency {settings.envoy_concurrency} "
        "(WORKERS / ENVOY_CONCURRENCY)",
    ]


def _envoy_version(binary: str) -> str:
    text = tool_version([binary, "--version"])
    match = re.search(r"/(\d+\.\d+\.\d+)/", text)
    return match.group(1) if match else text


def floor_ratio_lines(runs: list[Run], high_c: int) -> list[str]:
    """Issue 25's targets, ratios of one run: the service's CPU per call at `high_c` over the reference
    servicer's with one aiohttp call (REST via Envoy, and gRPC direct), batchgate's own share of the REST
    c=1 p50 overhead, and REST req/s at `high_c` over the reference Envoy + servicer + aiohttp row."""
    by = {(r.target, r.c): r for r in runs}
    lines = []

    def line(ok: bool, text: str) -> None:
        lines.append(f"{'PASS' if ok else 'MISS'}  {text}")

    for ours, floor, what in (
        ("rest_envoy", "rest_floor_upstream", "REST via Envoy"),
        ("grpc_direct", "grpc_floor_upstream", "gRPC direct"),
    ):
        if (ours, high_c) in by and (floor, high_c) in by:
            mine, theirs = by[(ours, high_c)].cpu_us_per_req("service"), by[(floor, high_c)].cpu_us_per_req("service")
            if theirs > 0:
                ratio = mine / theirs
                line(
                    ratio <= TARGET_FLOOR_CPU_RATIO,
                    f"service CPU per call, {what} c={high_c}, over the reference servicer with one aiohttp call: "
                    f"{mine:.0f} / {theirs:.0f} us = {ratio:.2f}x (target <= {TARGET_FLOOR_CPU_RATIO}x)",
                )
    if all((name, 1) in by for name in ("baseline", "rest_floor_upstream", "rest_envoy")):
        base, call, full = (by[(name, 1)].pct(50) for name in ("baseline", "rest_floor_upstream", "rest_envoy"))
        if full > base:
            share = (full - call) / (full - base)
            line(
                share <= TARGET_FLOOR_OWN_SHARE,
                f"batchgate's own share of the REST via Envoy c=1 p50 overhead: {share * 100:.0f}% "
                f"(target <= {TARGET_FLOOR_OWN_SHARE * 100:.0f}%)",
            )
    if ("rest_envoy", high_c) in by and ("rest_floor_upstream", high_c) in by:
        mine_rps, floor_rps = by[("rest_envoy", high_c)].rps, by[("rest_floor_upstream", high_c)].rps
        if floor_rps > 0:
            ratio = mine_rps / floor_rps
            line(
                ratio >= TARGET_FLOOR_RPS_RATIO,
                f"REST via Envoy c={high_c} req/s over the reference Envoy + servicer + aiohttp row: "
                f"{mine_rps:.0f} / {floor_rps:.0f} = {ratio:.2f}x (target >= {TARGET_FLOOR_RPS_RATIO}x)",
            )
    return lines


def breakdown_lines(runs: list[Run], high_c: int) -> list[str]:
    """Where the overheads go, from the reference rows (the same stack with none of batchgate's code):
    REST via Envoy to the trivial servicer (the Envoy edge and grpc.aio alone), the same with one
    aiohttp call to the simulator, then the gateway; likewise for gRPC direct without Envoy."""
    by = {(r.target, r.c): r for r in runs}
    lines = []

    def split(c: int, floor: str, with_upstream: str, ours: str, title: str, what: str) -> None:
        if any((name, c) not in by for name in ("baseline", floor, with_upstream, ours)):
            return
        base, zero, call, full = (by[(n, c)].pct(50) for n in ("baseline", floor, with_upstream, ours))
        overhead = full - base
        parts = (
            (f"{what} alone (no upstream call, no batchgate code)", zero - base),
            ("one aiohttp call to the provider", call - zero),
            ("batchgate's own code", full - call),
        )
        shares = "; ".join(f"{label} {value:+.2f} ms ({value / overhead * 100:.0f}%)" for label, value in parts)
        lines.append(f"- {title} c={c} p50 overhead {overhead:.2f} ms: {shares}")

    split(1, "rest_floor", "rest_floor_upstream", "rest_envoy", "REST via Envoy", "the Envoy edge and grpc.aio")
    split(1, "grpc_floor", "grpc_floor_upstream", "grpc_direct", "gRPC direct", "grpc.aio")
    names = ("rest_floor", "rest_floor_upstream", "rest_envoy")
    if all((name, high_c) in by for name in names):
        zero, call, full = (by[(name, high_c)] for name in names)

        def cpu(r: Run) -> str:
            return f"{r.cpu_us_per_req('service'):.0f} + {r.cpu_us_per_req('envoy'):.0f} us"

        lines.append(
            f"- REST via Envoy c={high_c}, req/s (service + Envoy CPU per call): the Envoy edge and grpc.aio alone "
            f"{zero.rps:.0f} ({cpu(zero)}); with one aiohttp call {call.rps:.0f} ({cpu(call)}); the gateway "
            f"{full.rps:.0f} ({cpu(full)})"
        )
    return lines
