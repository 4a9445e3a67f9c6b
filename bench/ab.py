"""`python -m bench.ab [VARIANTS] [--against REV] [--rounds N] [--paths rest_envoy,grpc_direct]`: an A/B
of service settings given as environment variables, or of this checkout's code against another
revision's, e.g.

    python -m bench.ab '{"two": {"WORKERS": "2"}, "one": {"WORKERS": "1"}}' --rounds 2
    python -m bench.ab --against main --rounds 4

Each round starts a fresh simulator and gateway (and the reference servicers) per variant, in an
order that alternates from round to round, and measures each path at c=1 and c=64 with h2load.
`--against REV` adds a variant named REV: the same measurement in a temporary git worktree of REV
(its service, gateway and generated code; this checkout's bench/, so both are measured alike). On a
shared machine one run per variant says little: compare the rounds side by side; the last lines give
the median over rounds of each round's difference to the first variant.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import ROOT

LEVELS = ((1, 1000, 200), (64, 8000, 1000))  # (concurrency, measured requests, warm-up requests)
# What one round of one variant measures per path and level.
Measured = dict[str, dict[str, list[float]]]


def one_round(paths: list[str]) -> Measured:
    """One gateway (as the environment configures it) measured on `paths`: {"path c": [p50 ms,
    req/s, service CPU us per call]}."""
    from bench.install import ensure_h2load
    from bench.load import H2Load, measure
    from bench.paths import targets, wait_until_sane
    from bench.system import System

    out: Measured = {}
    with tempfile.TemporaryDirectory(prefix="batchgate-ab-") as tmp:
        client = H2Load(ensure_h2load(), Path(tmp), 8)
        system = System(Path(tmp))
        try:
            system.start()
            system.start_floor()
            wait_until_sane(system)
            by_name = {t.name: t for t in targets(system)}
            for path in paths:
                for c, n, warm in LEVELS:
                    run = measure(client, system.groups_for(by_name[path]), by_name[path], c, n, warm)
                    out.setdefault(path, {})[str(c)] = [run.pct(50), run.rps, run.cpu_us_per_req("service")]
        finally:
            system.stop()
    return out


def checkout_of(rev: str, into: Path) -> Path:
    """A worktree of `rev` with its generated code, measured by this checkout's bench/."""
    subprocess.run(["git", "worktree", "add", "--detach", str(into), rev], cwd=ROOT, check=True, capture_output=True)
    shutil.copytree(ROOT / "bench", into / "bench", dirs_exist_ok=True)
    subprocess.run([sys.executable, "-m", "gateway.codegen"], cwd=into, check=True, capture_output=True)
    return into


def run_round(checkout: Path, env: dict[str, str], paths: list[str]) -> Measured:
    """`one_round` in a fresh process, its code from `checkout`, its environment plus `env`."""
    answer = subprocess.run(
        [sys.executable, "-m", "bench.ab", "--one-round", "--paths", ",".join(paths)],
        cwd=checkout,
        env={**os.environ, **env, "PYTHONPATH": str(checkout)},
        check=True,
        stdout=subprocess.PIPE,
    )
    *progress, last = answer.stdout.decode().strip().splitlines()
    print("\n".join(progress), flush=True)
    return json.loads(last)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab")
    parser.add_argument("variants", nargs="?", default='{"this checkout": {}}', help='{"name": {"ENV": "value"}}')
    parser.add_argument("--against", metavar="REV", help="also this git revision's code, as one more variant")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--paths", default="rest_envoy,grpc_direct")
    parser.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)  # what run_round runs
    args = parser.parse_args(argv)
    paths = args.paths.split(",")
    if args.one_round:
        print(json.dumps(one_round(paths)))
        return
    variants: dict[str, tuple[Path, dict[str, str]]] = {
        name: (ROOT, env) for name, env in json.loads(args.variants).items()
    }
    results: dict[tuple[str, int, str], list[list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="batchgate-ab-rev-") as tmp:
        if args.against:
            variants[args.against] = (checkout_of(args.against, Path(tmp) / "other"), {})
        try:
            for round_ in range(args.rounds):
                order = list(variants.items())
                for name, (checkout, env) in order if round_ % 2 == 0 else order[::-1]:
                    for path, levels in run_round(checkout, env, paths).items():
                        for c, values in levels.items():
                            results.setdefault((path, int(c), name), []).append(values)
        finally:
            if args.against:
                remove = ["git", "worktree", "remove", "--force", str(Path(tmp) / "other")]
                subprocess.run(remove, cwd=ROOT, check=False)
    for (path, c, name), rounds in sorted(results.items()):
        p50 = " ".join(f"{r[0]:.2f}" for r in rounds)
        rps = " ".join(f"{r[1]:.0f}" for r in rounds)
        cpu = " ".join(f"{r[2]:.0f}" for r in rounds)
        print(f"{path:<20} c={c:<3} {name:<14} p50 ms {p50:<20} req/s {rps:<18} service CPU us/call {cpu}")
    first = next(iter(variants))
    for (path, c, name), rounds in sorted(results.items()):
        if name == first:
            continue
        ours = results[(path, c, first)]
        p50, rps, cpu = (statistics.median(a[i] - b[i] for a, b in zip(ours, rounds, strict=True)) for i in range(3))
        print(
            f"{first} - {name}, {path} c={c}: p50 {p50 * 1000:+.0f} us, {rps:+.0f} req/s, "
            f"service CPU {cpu:+.0f} us/call (median of {len(rounds)} rounds)"
        )


if __name__ == "__main__":
    main()
