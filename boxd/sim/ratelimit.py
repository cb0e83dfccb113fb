"""Per-user rate limits as token buckets (pure; the clock is passed in).

Box allows about 1,000 API calls and 240 uploads per minute per user. A bucket holds
``burst`` tokens and refills at ``per_window / window`` tokens a second; ``burst=1`` makes the
limit strictly smooth, the hardest case for a client's pacing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

_EPSILON = 1e-9


@dataclass
class TokenBucket:
    rate: float  # tokens per second
    capacity: float
    tokens: float = field(default=-1.0)
    stamp: float = 0.0

    def take(self, now: float) -> float:
        """Take one token; return 0 on success, else the seconds until one is available."""
        if self.tokens < 0:  # first use: start full
            self.tokens, self.stamp = self.capacity, now
        self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0 - _EPSILON:  # float drift must not delay an admission by a tick
            self.tokens = max(0.0, self.tokens - 1.0)
            return 0.0
        return (1.0 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per (user, kind); limits of 0 mean unlimited."""

    def __init__(self) -> None:
        self._buckets: dict[tuple[str, str], TokenBucket] = {}

    def check(self, user_id: str, kind: str, per_window: int, window: float, burst: int, now: float) -> int:
        """Return 0 if the call may proceed, else the ``Retry-After`` seconds to answer with."""
        if per_window <= 0:
            return 0
        rate = per_window / window
        bucket = self._buckets.get((user_id, kind))
        if bucket is None or bucket.rate != rate or bucket.capacity != burst:
            bucket = self._buckets[(user_id, kind)] = TokenBucket(rate=rate, capacity=float(burst))
        wait = bucket.take(now)
        return 0 if wait == 0 else max(1, math.ceil(wait))

    def reset(self) -> None:
        self._buckets.clear()
