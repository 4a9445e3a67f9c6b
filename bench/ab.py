"""`python -m bench.ab VARIANTS [--rounds N] [--paths rest_envoy,grpc_direct]`: an A/B of service
settings given as environment variables, e.g.

    python -m bench.ab '{"two": {"WORKERS": "2"}, "one": {"WORKERS": "1"}}' --rounds 2

Each round starts a fresh simulator and gateway (and the reference servicers) per variant, in an
order that alternates from round to round, and measures each path at c=1 and c=64 with h2load. On a
shared machine one run per variant says little: compare the rounds side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from bench.common import ROOT
from bench.install import ensure_h2load
from bench.load import H2Load, measure
from bench.paths import targets, wait_until_sane
from bench.system import System

LEVELS = ((1, 1000, 200), (64, 8000, 1000))  # (concurrency, measured requests, warm-up requests)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ab")
    parser.add_argument("variants", help='JSON: {"name": {"ENV_VAR": "value", ...}, ...}')
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--paths", default="rest_envoy,grpc_direct")
    args = parser.parse_args(argv)
    variants: dict[str, dict[str, str]] = json.loads(args.variants)
    paths = args.paths.split(",")
    os.chdir(ROOT)
    results: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="batchgate-ab-") as tmp:
        client = H2Load(ensure_h2load(), Path(tmp), 8)
        for round_ in range(args.rounds):
            order = list(variants.items())
            for name, env in order if round_ % 2 == 0 else order[::-1]:
                saved = {key: os.environ.get(key) for key in env}
                os.environ.update(env)  # the gateway's processes inherit them
                workdir = Path(tmp) / f"{name}-{round_}"
                workdir.mkdir()
                system = System(workdir)
                try:
                    system.start()
                    system.start_floor()
                    wait_until_sane(system)
                    by_name = {t.name: t for t in targets(system)}
                    for path in paths:
                        for c, n, warm in LEVELS:
                            run = measure(client, system.groups_for(by_name[path]), by_name[path], c, n, warm)
                            results.setdefault((path, c, name), []).append(
                                (run.pct(50), run.rps, run.cpu_us_per_req("service"))
                            )
                finally:
                    system.stop()
                    for key, value in saved.items():
                        if value is None:
                            os.environ.pop(key, None)
                        else:
                            os.environ[key] = value
    for (path, c, name), rounds in sorted(results.items()):
        p50 = " ".join(f"{r[0]:.2f}" for r in rounds)
        rps = " ".join(f"{r[1]:.0f}" for r in rounds)
        cpu = " ".join(f"{r[2]:.0f}" for r in rounds)
        print(f"{path:<20} c={c:<3} {name:<10} p50 ms {p50:<14} req/s {rps:<12} service CPU us/call {cpu}")


if __name__ == "__main__":
    main()
