"""Capped exponential backoff with full jitter, for the calls that may be repeated (queries and downloads)."""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["RetryPolicy"]


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with full jitter, for idempotent calls.

    Attempt ``n`` (from 0) waits a uniform random time in ``[0, min(max_delay, base_delay * 2**n)]``, but at
    least the server's ``Retry-After`` (itself capped by ``max_retry_after``).
    """

    max_attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_retry_after: float = 300.0

    def delay(self, attempt: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        cap = min(self.max_delay, self.base_delay * (2**attempt))
        backoff = (rng or random.Random()).uniform(0, cap)
        if retry_after is not None:
            return max(backoff, min(retry_after, self.max_retry_after))
        return backoff
