"""batchgate benchmark: gateway overhead over a direct provider call, side by side, in one run.

    python -m bench.run                      # full run (< 3 min on 2 cores): bench/results/results.md + latency.png
    python -m bench.run --smoke              # ~10 s: c=1 and c=8, a few hundred requests per path -> smoke.md
    python -m bench.run --rss-soak 200000    # RSS flatness only: REST via Envoy at c=64, RSS every 10k -> soak.md
    python -m bench.run --profile            # full run, then py-spy on the service under REST c=64 -> profile.md
    python -m bench.run --profile-only --profile-native   # only the profile (after a warm-up), C frames too

Options: --c1-requests N (2000), --c64-requests N (20000), --concurrency C (64), --grpc-conns K (8:
the c concurrent gRPC calls go over K HTTP/2 connections, c/K streams each), --envoy-concurrency N
and --workers N (exported as ENVOY_CONCURRENCY / WORKERS to the stack), --client h2load|python,
--no-floor (skip the reference path).

What runs, all on loopback: one provider simulator and the gateway (service + Envoy) against it
(bench/system.py). Four paths plus a reference (bench/paths.py), each measured at c=1 (latency) and
c=64 (throughput), after a warm-up, by h2load or a Python fallback client (bench/load.py), with the
CPU and RSS of each process group read from /proc (bench/procs.py); then the cost of a virtual-key
rate limit from interleaved rounds (bench/limit_cost.py). The report (bench/report.py) gives per
path and concurrency the latencies, the overhead over the baseline and CPU per request, and the
targets as PASS/MISS lines that never fail the run; bench/plot.py draws latency.png and
bench/profiling.py runs py-spy. Tools missing on the machine are installed on demand (bench/install.py).

Exit status: 0; 1 when a path returned errors in --smoke (or in the soak); 2 when the harness itself
could not run (sanity check failed, a tool is missing).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.bounds_cost import bounds_cost
from bench.common import RESULTS, ROOT, HarnessError, log, percentile
from bench.install import ensure_generated_code, ensure_h2load, ensure_pip_requirements
from bench.limit_cost import limit_check_cost
from bench.load import H2Load, LoadClient, PythonClient, Run, measure
from bench.paths import detector_self_test, targets, wait_until_sane
from bench.plot import write_png
from bench.profiling import profile
from bench.report import (
    NOT_GATEWAY,
    benchmark_markdown,
    breakdown_lines,
    cpu_lines,
    evaluate_targets,
    floor_ratio_lines,
    machine_info,
    results_table,
    rss_line,
    rss_soak_markdown,
)
from bench.system import System


def run_benchmark(args: argparse.Namespace, client: LoadClient, system: System) -> int:
    smoke = args.smoke
    levels = [(1, args.c1_requests, args.c1_warmup), (args.concurrency, args.c64_requests, args.c64_warmup)]
    groups = system.groups()
    all_targets = targets(system)
    labels = {t.name: t.label for t in all_targets}
    info = machine_info(client, args)
    rss_before = groups.rss("service")
    envoy_rss_before = groups.rss("envoy")
    started = time.monotonic()
    runs: list[Run] = []
    for c, n, warm in levels:
        for target in all_targets:
            runs.append(measure(client, system.groups_for(target), target, c, n, warm))
    rss_after = groups.rss("service")
    envoy_rss_after = groups.rss("envoy")
    # What the service process handled: every gateway path's measured and warm-up requests.
    total_requests = sum(r.n + warm for r in runs for c, _, warm in levels if c == r.c and r.target not in NOT_GATEWAY)
    elapsed = time.monotonic() - started

    limit_lines = limit_check_cost(client, system, *((4, 100) if smoke else (12, 300)))
    bounds_lines = bounds_cost(client, system, *((2, 100, 400) if smoke else (6, 300, 4000)))
    table = results_table(runs, labels)
    verdicts = evaluate_targets(runs, args.concurrency, None) + floor_ratio_lines(runs, args.concurrency)
    verdicts += limit_lines + bounds_lines
    summary = [
        rss_line(rss_before, rss_after, total_requests, envoy_rss_before, envoy_rss_after),
        *cpu_lines(runs, labels, args.concurrency),
        *breakdown_lines(runs, args.concurrency),
    ]
    md = benchmark_markdown(smoke, table, summary, verdicts, info, elapsed)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("smoke.md" if smoke else "results.md")
    if not smoke:
        backend = plot(runs, labels, args.concurrency, RESULTS / "latency.png")
        md += [f"![latency percentiles per path](latency.png) (plotted with {backend})", ""]
    out.write_text("\n".join(md))
    print()
    print(table)
    print()
    for line in summary:
        print(line)
    print()
    for line in verdicts:
        print(line)
    print(f"\nwrote {out.relative_to(ROOT)}" + ("" if smoke else " and bench/results/latency.png"))
    if args.profile:
        profile(args, client, groups, all_targets[1])
    errors = sum(r.result.errors for r in runs)
    if smoke and errors:
        print(f"SMOKE FAILED: {errors} errors", file=sys.stderr)
        return 1
    return 0


def plot(runs: list[Run], labels: dict[str, str], high_c: int, out: Path) -> str:
    if not ensure_pip_requirements(ROOT / "bench" / "requirements.txt", "matplotlib"):
        log("matplotlib not installable: writing the fallback bar chart")
    panels = []
    for c, what in ((1, "latency"), (high_c, "under load")):
        series = [(labels[r.target], r.result.latencies_ms) for r in runs if r.c == c]
        panels.append((f"c={c} ({what})", series))
    return write_png(panels, out, "batchgate: client-side latency percentiles per path (same simulator)")


def run_soak(args: argparse.Namespace, client: LoadClient, system: System) -> int:
    groups = system.groups()
    info = machine_info(client, args)
    target = next(t for t in targets(system) if t.name == "rest_envoy")
    chunk, done, errors = 10_000, 0, 0
    rows: list[tuple[int, int, int, float, float]] = []
    rss_start = groups.rss("service")
    log(f"RSS soak: {args.rss_soak:,} requests REST via Envoy at c={args.concurrency}, reading RSS every {chunk:,}")
    client.run(target, args.concurrency, 1000)
    started = time.monotonic()
    while done < args.rss_soak:
        n = min(chunk, args.rss_soak - done)
        result = client.run(target, args.concurrency, n)
        done += n
        errors += result.errors
        rss = groups.rss("service")
        rows.append((done, rss, groups.rss("envoy"), n / result.elapsed_s, percentile(result.latencies_ms, 99)))
        log(
            f"{done:>8,} requests  service RSS {rss / 1024:7.1f} MiB  {rows[-1][3]:6.0f} req/s  "
            f"p99 {rows[-1][4]:6.2f} ms  errors {result.errors}"
        )
    growth = (rows[-1][1] - rows[0][1]) / rows[0][1]
    verdict = evaluate_targets([], args.concurrency, growth)[-1]
    md = rss_soak_markdown(args, rows, time.monotonic() - started, errors, rss_start, growth, verdict, info)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "soak.md").write_text("\n".join(md))
    print("\n" + verdict + "\nwrote bench/results/soak.md")
    return 1 if errors else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="~10 s: c=1 and c=8, writes smoke.md")
    parser.add_argument("--rss-soak", type=int, metavar="N", help="only the RSS soak: N REST requests at c=64")
    parser.add_argument("--profile", action="store_true", help="after the run, py-spy the service under REST c=64")
    parser.add_argument("--profile-native", action="store_true", help="py-spy --native (C frames too)")
    parser.add_argument("--profile-only", action="store_true", help="no measured runs: a warm-up, then the profile")
    parser.add_argument("--profile-requests", type=int, default=10_000)
    parser.add_argument(
        "--profile-path",
        default="rest_envoy",
        help="the path profiled: rest_envoy (default), grpc_direct, or a reference servicer's path "
        "(rest_floor_upstream, grpc_floor_upstream)",
    )
    parser.add_argument("--c1-requests", type=int)
    parser.add_argument("--c64-requests", type=int)
    parser.add_argument("--concurrency", type=int, help="the high concurrency level (64; 8 with --smoke)")
    parser.add_argument("--grpc-conns", type=int, default=8)
    parser.add_argument("--client", choices=("h2load", "python"), default="h2load")
    parser.add_argument("--envoy-concurrency", type=int)
    parser.add_argument("--workers", type=int)
    parser.add_argument("--no-floor", action="store_true", help="skip the trivial grpc.aio reference path")
    parser.add_argument(
        "--limits-only", action="store_true", help="only the rate-limit check's cost (issue 11), printed, ~2 min"
    )
    parser.add_argument(
        "--bounds-only",
        action="store_true",
        help="only what the bounds of issue 21 cost the single cancel (with against without), ~3 min",
    )
    args = parser.parse_args(argv)
    if args.bounds_only:
        args.no_floor = True
    if args.smoke:
        defaults = dict(c1_requests=300, c64_requests=600, concurrency=8, c1_warmup=50, c64_warmup=100)
    else:
        defaults = dict(c1_requests=2000, c64_requests=20_000, concurrency=64, c1_warmup=200, c64_warmup=2000)
    for name, value in defaults.items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)
    if args.envoy_concurrency is not None:
        os.environ["ENVOY_CONCURRENCY"] = str(args.envoy_concurrency)
    if args.workers is not None:
        os.environ["WORKERS"] = str(args.workers)

    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    ensure_generated_code()
    with tempfile.TemporaryDirectory(prefix="batchgate-bench-") as tmp:
        workdir = Path(tmp)
        binary = ensure_h2load() if args.client == "h2load" else None
        client: LoadClient
        if binary:
            client = H2Load(binary, workdir, args.grpc_conns)
        else:
            if args.client == "h2load":
                log("h2load unavailable (not installed and not installable): falling back to the Python client")
            client = PythonClient(args.grpc_conns)
        log(f"load generator: {client.name} ({client.version})")
        system = System(workdir)
        try:
            system.start()
            measuring = not (args.rss_soak or args.profile_only)
            profiling_a_reference = args.profile_only and "floor" in args.profile_path
            if (not args.no_floor and measuring and not args.limits_only) or profiling_a_reference:
                system.start_floor()
            if measuring:
                system.start_redis_gateway()
            if measuring and not args.limits_only:
                system.start_unbounded_gateway()
            log(f"simulator {system.sim_url}, Envoy {system.envoy_url}, service {system.grpc_url}")
            wait_until_sane(system)
            detector_self_test(system, client)
            if args.rss_soak:
                return run_soak(args, client, system)
            if args.limits_only:
                print("\n".join(limit_check_cost(client, system, 12, 300)))
                return 0
            if args.bounds_only:
                print("\n".join(bounds_cost(client, system, 6, 300, 4000)))
                return 0
            if args.profile_only:
                path = next(t for t in targets(system) if t.name == args.profile_path)
                client.run(path, args.concurrency, args.c64_warmup)
                profile(args, client, system.groups_for(path), path)
                return 0
            return run_benchmark(args, client, system)
        except HarnessError as err:
            print(f"bench: {err}", file=sys.stderr)
            if system.stack is not None:
                print(system.logs_tail(), file=sys.stderr)
            return 2
        finally:
            system.stop()


if __name__ == "__main__":
    sys.exit(main())
