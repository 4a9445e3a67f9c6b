"""The client's retry policy, written down as data (in the manner of google-api-core's `Retry`).

batchgate already retries a provider's failures per key (network errors, 408, 429, 5xx), so the
client retries only what cannot multiply the calls to a provider (`BatchgateError.retryable`):

- the call never reached batchgate: no connection could be made, so nothing was sent;
- batchgate refused the call itself before calling any provider and said when to come back: its
  admission limit (429 `overloaded`), a virtual key's rate limit (429 `rate_limited`) or an open
  circuit (503 `circuit_open`), each with a Retry-After.

An error from a provider, a provider that stayed down through batchgate's retries (502/503), a
connection that broke after the request was sent, and every other answer are raised at once. The
policy is bounded three times: a few attempts, the longest Retry-After worth waiting for, and the
call's deadline, which every attempt and pause share.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import grpc

from batchgate_client.errors import BatchgateError


@dataclass(frozen=True)
class RetryPolicy:
    """How often and after how long a retryable failure is tried again.

    `attempts` counts every attempt, the first included (1: never retry). The pause before retry
    n is `initial_backoff * multiplier ** (n - 1)` seconds, at most `max_backoff`, scaled by a random
    factor in [1 - jitter, 1 + jitter], and never shorter than the server's Retry-After. A
    Retry-After longer than `max_retry_after` seconds is not waited for: the error is raised, with
    `retry_after` set, for the caller to decide. `codes` limits the retried failures further to
    these gRPC codes.
    """

    attempts: int = 3
    initial_backoff: float = 0.2
    max_backoff: float = 2.0
    multiplier: float = 2.0
    jitter: float = 0.2
    codes: frozenset[grpc.StatusCode] = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED})
    max_retry_after: float = 10.0  # last: 0.1's positional order is kept

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int) or self.attempts < 1:
            raise ValueError(f"attempts must be a whole number >= 1, not {self.attempts!r}")
        for name in ("initial_backoff", "max_backoff", "multiplier", "max_retry_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        if isinstance(self.jitter, bool) or not isinstance(self.jitter, int | float) or not 0 <= self.jitter <= 1:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter!r}")
        if not all(isinstance(code, grpc.StatusCode) for code in self.codes):
            raise TypeError("codes must hold grpc.StatusCode values")

    def retryable(self, code: grpc.StatusCode | None) -> bool:
        """Whether failures with this gRPC code may be retried at all (see `should_retry`)."""
        return code in self.codes

    def should_retry(self, error: BatchgateError) -> bool:
        """Whether this failure is tried again: safe to retry (`error.retryable`), with one of
        `codes`, and a Retry-After (if any) no longer than `max_retry_after`."""
        if not (error.retryable and self.retryable(error.grpc_code)):
            return False
        return error.retry_after is None or error.retry_after <= self.max_retry_after

    def backoff(self, retry: int, rand: random.Random | None = None) -> float:
        """The pause before retry number `retry` (1 for the second attempt)."""
        base = min(self.max_backoff, self.initial_backoff * self.multiplier ** (retry - 1))
        factor = 1 + self.jitter * (2 * (rand or random).random() - 1)
        return max(0.0, base * factor)

    def pause(
        self,
        retry: int,
        remaining: float | None,
        rand: random.Random | None = None,
        retry_after: float | None = None,
    ) -> float | None:
        """The pause before retry number `retry`, or None when the policy says stop: attempts used
        up, or the pause would not leave time for another attempt before the deadline."""
        if retry >= self.attempts:
            return None
        pause = max(self.backoff(retry, rand), retry_after or 0.0)
        if remaining is not None and pause >= remaining:
            return None
        return pause

    def next_pause(
        self, error: BatchgateError, retry: int, remaining: float | None, rand: random.Random | None = None
    ) -> float | None:
        """The pause before trying `error`'s call again as retry number `retry`, or None to raise it."""
        if not self.should_retry(error):
            return None
        return self.pause(retry, remaining, rand, error.retry_after)


DEFAULT_RETRY = RetryPolicy()
NO_RETRY = RetryPolicy(attempts=1)
