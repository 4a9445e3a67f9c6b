"""What the fault soak (bench/soak.py) injects and under which network settings, and what it
counts: one fault type per provider, each at a fixed rate, with `anthropic` as the fault-free
control. Shared by the run (bench/soak.py) and its report (bench/soak_report.py)."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field

CLIENT_TIMEOUT_S = 10.0
DEADLINE_S = 2.0
NETWORK = {
    "default_request_timeout_in_seconds": DEADLINE_S,
    "max_retries": 2,
    "retry_backoff_initial_ms": 50,
    "retry_backoff_max_ms": 500,
}
RSS_GROWTH_LIMIT = 0.10


@dataclass(frozen=True)
class FaultPlan:
    provider: str
    kind: str
    every_s: float  # one fault per this many seconds
    faults: tuple[dict, ...]  # used in turn
    expectation: str


PLANS = (
    FaultPlan("openai", "5xx", 0.1, tuple({"status": s} for s in (500, 502, 503, 504, 529)), "retried"),
    FaultPlan("azure", "429 + Retry-After", 0.2, ({"status": 429, "retry_after": 0.2},), "retried after 0.2 s"),
    FaultPlan("groq", "connection reset", 0.1, ({"reset": True},), "retried"),
    FaultPlan("together", "malformed JSON", 0.2, ({"malformed": True},), "502, not retried"),
    FaultPlan("xai", "slow (+400 ms)", 0.25, ({"latency_ms": 400},), "answered, not retried"),
    FaultPlan("mistral", "stall (+5 s)", 2.0, ({"latency_ms": 5000},), "504 at the 2 s deadline"),
)
CONTROL = "anthropic"
PROVIDERS = tuple(plan.provider for plan in PLANS) + (CONTROL,)


def batch_id(provider: str) -> str:
    # Mistral job ids are UUIDs; a fresh id per request makes attempts countable per request.
    return str(uuid.uuid4()) if provider == "mistral" else f"soak_{uuid.uuid4().hex}"


@dataclass
class Tally:
    sent: int = 0
    answered: int = 0
    timeouts: int = 0
    conn_errors: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)  # (status, error code)
    per_provider: dict = field(default_factory=lambda: defaultdict(Counter))  # provider -> (status, code)
    ids: dict = field(default_factory=dict)  # batch id -> provider
    latencies: list = field(default_factory=list)
