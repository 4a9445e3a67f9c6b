"""What every bench module shares: where things are, the seeded batch, the log line, the harness's
own error and the percentile every report uses (so two reports never disagree on what p99 means)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
BATCH_ID = "bench1"
GRPC_METHOD = "/batchgate.v1.BatchService/Cancel"


class HarnessError(RuntimeError):
    """The harness could not measure (as opposed to the gateway measuring badly)."""


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence (p in 0..100)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def load_average() -> str:
    """The 1/5/15-minute load averages, as the reports print them."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
