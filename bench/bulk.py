"""Bulk cancel benchmark: `python -m bench.bulk [--items 1000] [--runs 3]` (`make bench-bulk`).

Starts the gateway in sandbox mode (`gateway.stack.Stack`: simulators + one service worker + Envoy,
loopback only) and times `POST /v1/batches/cancel` with `--items` fresh sandbox batches and no wait,
from sending the request to the last NDJSON line, `--runs` times. While each run is in flight the
service worker's RSS (VmRSS, with its children) is sampled every 5 ms; its peak and the value
before the run are reported. Also reports the time to the first line. Writes nothing; prints a
markdown table. Bounded: at most --runs calls of at most 1,000 items, each with a 120 s timeout.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import orjson
import requests

from bench.procs import RssSampler, rss_kib, service_pids, with_descendants
from bench.system import sandbox_stack


def one_run(url: str, items: int, pids: list[int]) -> dict[str, float]:
    body = {"batches": [{"id": f"bench_{uuid.uuid4().hex[:16]}", "provider": "openai"} for _ in range(items)]}
    before = rss_kib(pids)
    lines, first = 0, None
    with RssSampler(pids) as sampler:
        started = time.perf_counter()
        with requests.post(f"{url}/v1/batches/cancel", json=body, stream=True, timeout=120) as resp:
            resp.raise_for_status()
            for line in resp.iter_lines():
                if not line:
                    continue
                event = orjson.loads(line)
                if first is None:
                    first = time.perf_counter() - started
                if "batch" not in event:
                    raise RuntimeError(f"item failed: {line[:300]!r}")
                lines += 1
        elapsed = time.perf_counter() - started
    if lines != items:
        raise RuntimeError(f"expected {items} lines, got {lines}")
    return {
        "seconds": elapsed,
        "first_line_s": first or 0.0,
        "rss_before_mib": before / 1024,
        "rss_peak_mib": sampler.peak_kib / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000, help="batches per call (1-1000)")
    parser.add_argument("--runs", type=int, default=3, help="calls to time (1-10)")
    args = parser.parse_args()
    if not 1 <= args.items <= 1000 or not 1 <= args.runs <= 10:
        parser.error("--items must be 1-1000 and --runs 1-10")
    with tempfile.TemporaryDirectory(prefix="bench-bulk-") as logs:
        stack = sandbox_stack(Path(logs), workers=1)
        try:
            pids = with_descendants(service_pids(stack))
            one_run(stack.http_url, 10, pids)  # warm-up: connections, first-call imports
            results = [one_run(stack.http_url, args.items, pids) for _ in range(args.runs)]
        finally:
            stack.stop()
    print(
        f"Bulk cancel of {args.items} sandbox batches (openai simulator, no wait), REST through Envoy, "
        f"1 service worker, client.bulk_concurrency 16\n"
    )
    print("| run | total s | first line s | items/s | service RSS before MiB | service RSS peak MiB |")
    print("|---|---|---|---|---|---|")
    for i, r in enumerate(results, 1):
        print(
            f"| {i} | {r['seconds']:.2f} | {r['first_line_s']:.3f} | {args.items / r['seconds']:.0f} "
            f"| {r['rss_before_mib']:.1f} | {r['rss_peak_mib']:.1f} |"
        )
    median = statistics.median(r["seconds"] for r in results)
    peak = max(r["rss_peak_mib"] for r in results)
    print(f"\nmedian {median:.2f} s for {args.items} items; peak service RSS {peak:.1f} MiB")


if __name__ == "__main__":
    main()
