"""Cumulative cache counters, exported as a plain snapshot so metrics code never holds cache state."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CacheStats:
    """A point-in-time snapshot; every counter is cumulative since the cache was created.

    - ``hits``/``misses``: ``get_or_load`` calls that found / did not find the key resident (callers
      that join an in-flight load count as misses; ``prefetch`` counts neither).
    - ``loads``/``load_failures``: loader calls that returned / raised.
    - ``rejected``: loaded values that were not kept (admission said no, or ``CacheFull``).
    - ``evictions``: entries removed to make room or to honour a ``resize`` (not ``discard``).
    - ``load_seconds_total``: time spent in loaders, measured with the cache's clock.
    - ``pinned``: keys currently pinned, resident or not.
    """

    hits: int
    misses: int
    evictions: int
    loads: int
    load_failures: int
    rejected: int
    load_seconds_total: float
    resident_bytes: int
    capacity_bytes: int
    entries: int
    pinned: int

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
