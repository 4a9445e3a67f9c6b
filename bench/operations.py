"""Cancel by selector at scale: `python -m bench.operations` (`make bench-ops`; `make bench` runs it too).

Starts the gateway in sandbox mode (`gateway.stack.Stack`: simulators, one service worker, Envoy,
loopback only) and, through REST on Envoy, with the sandbox's operator virtual key:

1. seeds `--batches` (10,000) running batches spread over openai, azure and anthropic, then times a
   dry run of a selector that matches all of them and the real run of the same selector, from the
   CancelMatching call until GetOperation says done; the service worker's RSS is sampled
   throughout (its growth over the value before the dry run is reported);
2. lets the openai simulator accept `--rate` (50) cancels per second (429 with Retry-After beyond),
   seeds `--rate-batches` (1,000) running openai batches and times their real run.

Targets (issue 27): dry run <= 10 s, real run <= 30 s, RSS growth <= 100 MB, 0 failed; the rate
run within 1.25x the time the limit allows (1,000 at 50/s: 25 s), 0 failed. Prints a markdown
table and writes bench/results/operations.md. Bounded: one gateway, at most 100,000 batches, each
operation given at most 300 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import RESULTS, ROOT, log
from bench.procs import RssSampler, rss_kib, service_pids, with_descendants
from bench.system import sandbox_stack

PROVIDERS = ("openai", "azure", "anthropic")
OPERATION_TIMEOUT_S = 300.0
TARGETS = {"dry run s": 10.0, "real run s": 30.0, "RSS growth MB": 100.0}


class Client:
    def __init__(self, url: str, sim_url: str) -> None:
        from sandbox.server import SANDBOX_OPERATOR_KEY

        self.url, self.sim_url = url, sim_url
        self.http = requests.Session()
        self.http.headers["x-bf-vk"] = SANDBOX_OPERATOR_KEY

    def seed(self, provider: str, count: int) -> None:
        body = {"count": count, "statuses": ["in_progress"], "cancel_delay_s": 3600}
        resp = self.http.post(f"{self.sim_url}/_sim/{provider}/seed", json=body, timeout=60)
        resp.raise_for_status()

    def cancel_rate(self, provider: str, per_second: int | None) -> None:
        resp = self.http.put(f"{self.sim_url}/_sim/{provider}/cancel_rate", json={"per_second": per_second}, timeout=5)
        resp.raise_for_status()

    def run(self, body: dict[str, Any]) -> tuple[float, dict[str, Any]]:
        """Seconds from the CancelMatching call until the operation is done, and the done operation."""
        started = time.perf_counter()
        resp = self.http.post(f"{self.url}/v1/batches:cancelMatching", json=body, timeout=30)
        resp.raise_for_status()
        name = resp.json()["name"]
        while time.perf_counter() - started < OPERATION_TIMEOUT_S:
            op = self.http.get(f"{self.url}/v1/{name}", timeout=60).json()
            if op.get("done"):
                return time.perf_counter() - started, op
            time.sleep(0.05)
        raise RuntimeError(f"{name} not done after {OPERATION_TIMEOUT_S:.0f} s")


def counts(op: dict[str, Any]) -> str:
    meta = op["metadata"]
    if "error" in op:
        return f"error {op['error']['code']}: {op['error']['message']}"
    names = ("matched", "cancel_accepted", "already_ended", "failed", "skipped", "pending")
    return ", ".join(f"{name} {meta[name]}" for name in names if meta[name] or name in ("matched", "failed"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10_000, help="running batches for the dry and real run")
    parser.add_argument("--rate-batches", type=int, default=1000, help="batches for the rate-limited run")
    parser.add_argument("--rate", type=int, default=50, help="cancels per second the simulator allows")
    args = parser.parse_args()
    if not 3 <= args.batches <= 100_000 or not 1 <= args.rate_batches <= 100_000 or args.rate < 1:
        parser.error("--batches 3-100000, --rate-batches 1-100000, --rate >= 1")
    rows: list[tuple[str, str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="bench-ops-") as tmp:
        stack = sandbox_stack(Path(tmp), workers=1, sandbox_auto_create=False)
        try:
            client = Client(stack.http_url, stack.sandbox_url)
            pids = with_descendants(service_pids(stack))
            per_provider = [args.batches // 3 + (1 if i < args.batches % 3 else 0) for i in range(3)]
            for provider, count in zip(PROVIDERS, per_provider, strict=True):
                client.seed(provider, count)
            selector = {"providers": list(PROVIDERS)}
            client.run({"selector": selector, "validate_only": True, "max_batches": 10})  # warm-up: refused
            before = rss_kib(pids)
            with RssSampler(pids) as sampler:
                log(f"dry run over {args.batches} batches")
                dry_s, dry = client.run({"selector": selector, "validate_only": True, "max_batches": args.batches})
                log(f"real run over {args.batches} batches")
                real_s, real = client.run({"selector": selector, "max_batches": args.batches})
            growth_mb = (sampler.peak_kib - before) * 1024 / 1e6
            rows += [
                (f"dry run, {args.batches:,} batches, 3 providers", f"{dry_s:.2f}", "<= 10", counts(dry)),
                (f"real run, {args.batches:,} batches, 3 providers", f"{real_s:.2f}", "<= 30", counts(real)),
                (
                    "service RSS growth (peak over the value before)",
                    f"{growth_mb:.1f} MB",
                    "<= 100 MB",
                    f"{before / 1024:.1f} -> {sampler.peak_kib / 1024:.1f} MiB",
                ),
            ]
            client.cancel_rate("openai", args.rate)
            client.seed("openai", args.rate_batches)
            log(f"real run over {args.rate_batches} openai batches at {args.rate} cancels/s")
            rate_s, rated = client.run({"selector": {"providers": ["openai"]}, "max_batches": args.rate_batches})
            allowed = args.rate_batches / args.rate
            rows.append(
                (
                    f"real run, {args.rate_batches:,} batches, provider allows {args.rate} cancels/s",
                    f"{rate_s:.2f}",
                    f"<= {1.25 * allowed:g} (1.25 x {allowed:g})",
                    counts(rated),
                )
            )
            client.cancel_rate("openai", None)
        finally:
            stack.stop()
    lines = [
        "# Cancel by selector at scale",
        "",
        "`make bench-ops` (`python -m bench.operations`): REST through Envoy, one service worker, sandbox "
        "simulators on loopback, `client.bulk_concurrency` 16.",
        "",
        "| run | seconds | target | result |",
        "|---|---|---|---|",
        *(f"| {what} | {value} | {target} | {result} |" for what, value, target, result in rows),
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "operations.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
