"""The client's retry policy, written down as data (in the manner of google-api-core's `Retry`).

Only UNAVAILABLE is retried: the service was not reached, was restarting or draining, or a
provider was down after the service's own retries. Anything else is an answer and retrying it
would only repeat it. The policy is bounded twice: a few attempts, and the call's deadline,
which every attempt and pause share. Sleeping and the clock are injected so tests step time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 3  # in all, the first one included
    initial_backoff: float = 0.2  # seconds before the second attempt
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2  # each pause is scaled by a random factor in [1 - jitter, 1 + jitter]
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE})

    def retryable(self, code: grpc.StatusCode | None) -> bool:
        return code in self.codes

    def backoff(self, retry: int, rand: random.Random | None = None) -> float:
        """The pause before retry number `retry` (1 for the second attempt)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        factor = 1 + self.jitter * (2 * (rand or random).random() - 1)
        return max(0.0, base * factor)

    def pause(self, retry: int, remaining: float | None, rand: random.Random | None = None) -> float | None:
        """The pause before retry number `retry`, or None when the policy says stop: attempts used
        up, or the pause would not leave time for another attempt before the deadline."""
        if retry >= self.attempts:
            return None
        pause = self.backoff(retry, rand)
        if remaining is not None and pause >= remaining:
            return None
        return pause


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)
