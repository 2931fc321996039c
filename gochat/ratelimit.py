"""Per-source token buckets with bounded memory.

Used for registrations per source IP. Memory is capped at ``max_sources`` entries:
full buckets are forgotten first (they carry no information); when every tracked
source is still active, new sources are refused until some bucket refills, which is
the polite failure under a flood (and the flood must pass the cookie check first).
"""

from __future__ import annotations

from collections.abc import Hashable


class TokenBuckets:
    def __init__(self, rate_per_s: float, burst: int, max_sources: int) -> None:
        if rate_per_s <= 0 or burst < 1 or max_sources < 1:
            raise ValueError("rate, burst and max_sources must be positive")
        self.rate = rate_per_s
        self.burst = float(burst)
        self.max_sources = max_sources
        self._buckets: dict[Hashable, list[float]] = {}  # key -> [tokens, last update]

    def __len__(self) -> int:
        return len(self._buckets)

    def _prune(self, now: float) -> None:
        full = [k for k, (tokens, last) in self._buckets.items() if tokens + (now - last) * self.rate >= self.burst]
        for k in full:
            del self._buckets[k]

    def allow(self, key: Hashable, now: float) -> tuple[bool, float]:
        """Take one token for ``key``. Returns (allowed, seconds until a token is available)."""
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_sources:
                self._prune(now)
                if len(self._buckets) >= self.max_sources:
                    return False, 1.0 / self.rate
            bucket = self._buckets[key] = [self.burst, now]
        tokens = min(self.burst, bucket[0] + max(0.0, now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return True, 0.0
        bucket[0] = tokens
        return False, (1.0 - tokens) / self.rate
