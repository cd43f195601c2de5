"""A token bucket: the rate limit of one API key."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """``rate`` requests per second on average, up to ``burst`` at once.

    The bucket holds up to ``burst`` tokens and starts full; it refills at ``rate`` tokens per
    second, and each request takes one. Not thread-safe: the event loop is its only user.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0 or burst < 1:
            raise ValueError(f"a rate limit needs rate > 0 and burst >= 1, got rate={rate}, burst={burst}")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()

    def take(self) -> bool:
        """Take one token if there is one: whether the request may go on."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
