"""Count-min frequency sketch with periodic halving (the TinyLFU "reset"), in pure Python.

The sketch remembers how often keys were requested *including while they were not resident*, in
constant memory, which is what lets the admission filter tell a returning popular model from a
one-off. Halving every ``sample_size`` requests ages old popularity out so drift is followed.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

_COUNTER_LIMIT = 255  # one byte per counter


@lru_cache(maxsize=1 << 16)
def _key_hash(key: str) -> int:
    # Stable across processes (unlike hash(str)), so benchmark runs are reproducible.
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little")


class FrequencySketch:
    """``depth`` rows of ``width`` counters saturating at ``max_count``. Estimates never fall below
    the (decayed) true count and exceed it only on hash collisions."""

    def __init__(
        self,
        width: int = 1 << 15,
        depth: int = 4,
        sample_size: int = 10_000,
        max_count: int = 15,
    ) -> None:
        if width <= 0 or width & (width - 1):
            raise ValueError(f"sketch width must be a power of two, got {width}")
        if depth < 1 or sample_size < 1:
            raise ValueError("sketch depth and sample_size must be positive")
        if not 1 <= max_count <= _COUNTER_LIMIT:
            raise ValueError(f"max_count must be in 1..{_COUNTER_LIMIT}, got {max_count}")
        self.max_count = max_count
        self.sample_size = sample_size
        self.resets = 0
        self._width = width
        self._depth = depth
        self._mask = width - 1
        self._table = bytearray(width * depth)
        self._halve_mask = int.from_bytes(b"\x7f" * len(self._table), "little")
        self._requests = 0

    def _indexes(self, key: str) -> list[int]:
        h = _key_hash(key)
        h1, h2 = h & 0xFFFFFFFF, (h >> 32) | 1  # double hashing: h1 + i*h2 per row
        w, m = self._width, self._mask
        return [row * w + ((h1 + row * h2) & m) for row in range(self._depth)]

    def estimate(self, key: str) -> int:
        t = self._table
        return min(t[i] for i in self._indexes(key))

    def increment(self, key: str) -> None:
        t = self._table
        idx = self._indexes(key)
        low = min(t[i] for i in idx)
        if low < self.max_count:
            # Conservative update: raise only the minimal counters; cuts collision overestimates.
            for i in idx:
                if t[i] == low:
                    t[i] = low + 1
        # Every request advances the aging clock, saturated or not. Counting only successful
        # increments (as Caffeine does) froze the sketch once hot counters saturated, which made
        # long aging periods collapse on the drift trace.
        self._requests += 1
        if self._requests >= self.sample_size:
            self._halve()

    def _halve(self) -> None:
        # Shift every byte right by one at C speed: the table as one big int, masked per byte.
        n = int.from_bytes(self._table, "little")
        n = (n >> 1) & self._halve_mask
        self._table[:] = n.to_bytes(len(self._table), "little")
        self._requests = 0
        self.resets += 1
