"""Seeding many batches at once: a generated mix (`generate`, the admin API's bulk seed) and the
demo mix `make run` starts the sandbox with (`seed_demo`)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from time import time
from typing import Any

from sandbox.core import STATUSES, Simulator

MAX_GENERATED = 100_000
DAY_S = 86_400

# The demo mix: (status, age in seconds, metadata, (total, completed, failed)).
DEMO_MIX: tuple[tuple[str, int, dict[str, str] | None, tuple[int, int, int]], ...] = (
    ("validating", 3 * 60, {"team": "search", "job": "nightly-eval"}, (2000, 0, 0)),
    ("in_progress", 20 * 60, {"team": "search", "job": "nightly-eval"}, (2000, 740, 3)),
    ("in_progress", 35 * 60, {"team": "search", "job": "nightly-eval"}, (2000, 1320, 11)),
    ("in_progress", 50 * 60, {"team": "ads", "job": "ctr-labels"}, (50_000, 12_400, 0)),
    ("finalizing", 2 * 3600, {"team": "ads", "job": "ctr-labels"}, (50_000, 49_870, 130)),
    ("validating", 10 * 60, None, (120, 0, 0)),
    ("in_progress", 4 * 3600, None, (8000, 5100, 40)),
    ("in_progress", 20 * 3600, None, (300, 210, 0)),
    ("failed", 5 * 3600, {"team": "ads", "job": "ctr-labels"}, (50_000, 0, 0)),
    ("completed", 26 * 3600, {"team": "search", "job": "nightly-eval"}, (2000, 1994, 6)),
    ("completed", 3 * DAY_S, None, (640, 640, 0)),
    ("cancelled", 2 * DAY_S, None, (1500, 400, 0)),
    ("expired", 8 * DAY_S, {"team": "search", "job": "nightly-eval"}, (2000, 1200, 0)),
)


def demo_batches(new_id: Callable[[], str], now: int) -> list[dict[str, Any]]:
    """The demo mix for one provider: running, finishing, finished and old batches, some with
    metadata {"team": ..., "job": ...} and some without, all unowned."""
    return [
        {
            "id": new_id(),
            "status": status,
            "created_at": now - age,
            "metadata": metadata,
            "request_counts": {"total": total, "completed": completed, "failed": failed},
        }
        for status, age, metadata, (total, completed, failed) in DEMO_MIX
    ]


def seed_demo(sim: Simulator, now: int | None = None) -> int:
    """Seeds every simulated provider with the demo mix; returns how many batches it made."""
    now = int(time()) if now is None else now
    seeded = 0
    for provider in sim.providers:
        store = sim.store(provider)
        seeded += len(store.seed_many(demo_batches(store.new_id, now)))
    return seeded


def generate(
    new_id: Callable[[], str],
    count: int,
    *,
    statuses: Sequence[str] | Mapping[str, float] = ("in_progress",),
    created_after: int | None = None,
    created_before: int | None = None,
    metadata: Sequence[Mapping[str, str] | None] = (None,),
    owners: Sequence[str | None] = (None,),
    random_seed: int | None = None,
    **fields: Any,
) -> list[dict[str, Any]]:
    """`count` batches: a status drawn from `statuses` (a list, or weights by status), a creation
    time uniform in [created_after, created_before) (default: the last day), metadata and owner
    drawn from their lists; `fields` (request_counts, cancel_delay_s) apply to all. ValueError
    for a bad argument."""
    if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_GENERATED:
        raise ValueError(f"count must be an integer 1-{MAX_GENERATED}")
    if isinstance(statuses, Mapping):
        names, weights = list(statuses), list(statuses.values())
        if not all(isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for w in weights):
            raise ValueError("status weights must be numbers >= 0")
        if not sum(weights):
            raise ValueError("status weights must not all be 0")
    elif isinstance(statuses, Sequence) and not isinstance(statuses, str):
        names, weights = list(statuses), [1.0] * len(statuses)
    else:
        raise ValueError("statuses must be a list of statuses or an object of weights")
    if not names or not set(names) <= STATUSES:
        raise ValueError(f"statuses must be some of {sorted(STATUSES)}")
    now = int(time())
    low = now - DAY_S if created_after is None else created_after
    high = now if created_before is None else created_before
    if not all(isinstance(t, int) and not isinstance(t, bool) for t in (low, high)) or low >= high:
        raise ValueError("created_after and created_before must be unix seconds with created_after < created_before")
    for name, choices in (("metadata", metadata), ("owners", owners)):
        if isinstance(choices, (str, Mapping)) or not isinstance(choices, Sequence) or not choices:
            raise ValueError(f"{name} must be a non-empty list")
    rng = random.Random(random_seed)
    drawn = rng.choices(names, weights, k=count)
    return [
        {
            **fields,
            "id": new_id(),
            "status": status,
            "created_at": rng.randrange(low, high),
            "metadata": rng.choice(metadata),
            "owner": rng.choice(owners),
        }
        for status in drawn
    ]
