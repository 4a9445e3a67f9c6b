"""How operations retry, wait, write their progress and deliver their webhook: data, not code (the
defaults are the documented behaviour; tests make it fast)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from service.usecases.waiting import PollPolicy

# How long a webhook is tried again (on 5xx or no answer) before it is given up.
WEBHOOK_FOR_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: `first_s` after the first failure, doubling up to `max_s`,
    each shortened by up to `jitter` at random."""

    first_s: float = 1.0
    max_s: float = 30.0
    jitter: float = 0.2

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        base = min(self.max_s, self.first_s * 2.0 ** max(0, failures - 1))
        return base * (1 - self.jitter * rand())


@dataclass(frozen=True, slots=True)
class OperationPolicy:
    """`retry`: a batch's cancel that failed in a way retrying can fix; `listing_retry`: a listing
    that did; `webhook_retry` and `webhook_for_s`: the webhook's delivery; `poll`: reading accepted
    batches back (with `wait`); progress is written once `flush_items` batches changed or
    `flush_seconds` after the first of them. A provider's Retry-After is never cut short."""

    retry: Backoff = Backoff()
    listing_retry: Backoff = Backoff(first_s=2.0, max_s=60.0)
    webhook_retry: Backoff = Backoff(first_s=1.0, max_s=300.0)
    poll: PollPolicy = PollPolicy()
    webhook_for_s: float = WEBHOOK_FOR_SECONDS
    flush_items: int = 100
    flush_seconds: float = 0.1
