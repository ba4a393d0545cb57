"""Per-school limits, pure and in-process: a token bucket per school and a slot count per key.

Why in-process (per replica) and not in Redis: the limits protect *this* replica's apiserver
connections and event loop from one school's flood; a Redis round trip per submission would add a
dependency (and a failure mode: fail open or closed?) to the hot path for a bound that only needs
to be roughly right. With N replicas behind the Service a school gets at most N times the rate;
the chart documents that. Nothing here awaits or locks: the event loop runs one call at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second; one token per submission."""

    capacity: float
    rate: float
    tokens: float
    stamp: float

    def refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def take(self, now: float) -> float:
        """0 if a token was taken; else the seconds until one will be there (nothing taken)."""
        self.refill(now)
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class RateLimiter:
    """One bucket per school; full (idle) buckets are dropped so the map stays small."""

    def __init__(
        self, per_minute: float, burst: int, clock: Clock = time.monotonic, max_idle: int = 4096
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self.max_idle = max_idle
        self._buckets: dict[str, TokenBucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def check(self, school: str) -> int:
        """0 if ``school`` may submit now, else the whole seconds to wait (for ``Retry-After``)."""
        if not self.enabled:
            return 0
        now = self.clock()
        bucket = self._buckets.get(school)
        if bucket is None:
            if len(self._buckets) >= self.max_idle:
                self._forget_full(now)
            bucket = self._buckets[school] = TokenBucket(self.burst, self.rate, self.burst, now)
        wait = bucket.take(now)
        return 0 if wait == 0 else max(1, math.ceil(wait))

    def _forget_full(self, now: float) -> None:
        for school, bucket in list(self._buckets.items()):
            bucket.refill(now)
            if bucket.tokens >= bucket.capacity:
                del self._buckets[school]

    def __len__(self) -> int:
        return len(self._buckets)


class SlotsExhausted(Exception):
    """Every slot of this key is taken."""


class Slots:
    """At most ``limit`` concurrent holders per key (0: unlimited); ``release`` is idempotent."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._held: dict[str, int] = {}

    def acquire(self, key: str) -> Lease:
        held = self._held.get(key, 0)
        if self.limit and held >= self.limit:
            raise SlotsExhausted(key)
        self._held[key] = held + 1
        return Lease(self, key)

    def _release(self, key: str) -> None:
        held = self._held.get(key, 0) - 1
        if held > 0:
            self._held[key] = held
        else:
            self._held.pop(key, None)

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def total(self) -> int:
        return sum(self._held.values())


class Lease:
    """One taken slot; releasing twice (a generator's finally and a disconnect) counts once."""

    def __init__(self, slots: Slots, key: str) -> None:
        self._slots: Slots | None = slots
        self.key = key

    def release(self) -> None:
        if self._slots is not None:
            self._slots._release(self.key)
            self._slots = None
