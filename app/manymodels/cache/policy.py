"""Eviction/admission policies for ``ModelCache``, pluggable by name.

- ``lru``: least recently used, by bytes. Ray Serve, ModelMesh and Seldon evict LRU (by count).
- ``gdsf``: GreedyDual-Size-Frequency (Cherkasova 1998): evict the lowest ``L + hits * cost / size``,
  where ``hits`` counts only since the entry was loaded and ``L`` rises to each victim's priority
  (aging). Admits everything.
- ``tinylfu-gdsf`` (default): the same cost/size-aware GDSF ordering, but with frequencies from a
  TinyLFU count-min sketch (4-bit counters, periodic halving) that remembers models across
  evictions, and a TinyLFU admission filter made size- and cost-aware (the "aggregated victims" rule
  of Einziger et al., "Lightweight Robust Size Aware Cache Management", 2022): a loaded newcomer is
  kept only if ``freq(new) * cost(new)`` beats the summed ``freq * cost`` of the entries it would
  displace, i.e. only if keeping it is expected to save more load-seconds than it costs.

Why the default (bench/cache_replay.py, numbers in docs/benchmarks.md): on stationary Zipf traces
(alpha 0.8-1.2, cache 1-10% of 10,000 models) it reaches 0.97-0.99x the hit ratio of an oracle that
statically keeps the C most popular models, where LRU gets 0.52-0.96x and GDSF 0.74-0.98x; on a
drifting trace it keeps 0.885x of Belady's hit ratio (LRU 0.785x, GDSF 0.769x); on a size-skewed
catalog it spends 0.90x GDSF's and 0.77x LRU's load-seconds (the best static choice, knowing the true
popularity, spends 0.74x LRU's). Without the admission filter, sketch frequencies alone were no
better than GDSF: one-off requests kept evicting models worth more load-seconds than they were.

The cache owns residency and pinning; a policy only orders candidates and votes on admission.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Set
from typing import ClassVar

from .sketch import FrequencySketch

_MIN_COST = 1e-6  # a loader measured at 0 s still has to weigh something in cost/size priorities


class EvictionPolicy(ABC):
    """Tracks resident keys for one cache. All methods are synchronous and called by the cache."""

    name: ClassVar[str]

    def record(self, key: str) -> None:  # noqa: B027 - optional hook, most policies ignore it
        """A request for ``key`` arrived (hit or miss); frequency-based policies count it."""

    @abstractmethod
    def on_insert(self, key: str, size: int, cost: float) -> None:
        """``key`` became resident; ``cost`` is its measured load time in seconds."""

    @abstractmethod
    def on_hit(self, key: str) -> None:
        """A resident ``key`` was requested."""

    @abstractmethod
    def on_remove(self, key: str, evicted: bool) -> None:
        """``key`` left the cache; ``evicted`` is False for an explicit discard."""

    @abstractmethod
    def victims(self, need: int, pinned: Set[str]) -> list[str] | None:
        """Resident keys to evict, in order, freeing at least ``need`` bytes without touching
        ``pinned``; None if that is impossible. Must not change state: the cache may not evict."""

    def admit(self, key: str, size: int, cost: float, victims: list[str]) -> bool:
        """Whether a newcomer is worth evicting ``victims`` for. Default: always."""
        return True


class LRUPolicy(EvictionPolicy):
    name = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[str, int] = OrderedDict()  # oldest first, key -> size

    def on_insert(self, key: str, size: int, cost: float) -> None:
        self._order[key] = size

    def on_hit(self, key: str) -> None:
        self._order.move_to_end(key)

    def on_remove(self, key: str, evicted: bool) -> None:
        self._order.pop(key, None)

    def victims(self, need: int, pinned: Set[str]) -> list[str] | None:
        out: list[str] = []
        freed = 0
        for key, size in self._order.items():
            if freed >= need:
                break
            if key not in pinned:
                out.append(key)
                freed += size
        return out if freed >= need else None


class _Entry:
    __slots__ = ("base", "priority", "seq", "size", "cost", "hits")

    def __init__(self, size: int, cost: float) -> None:
        self.base = 0.0  # L when last touched: the recency part of the priority
        self.priority = 0.0
        self.seq = 0
        self.size = max(size, 1)
        self.cost = max(cost, _MIN_COST)
        self.hits = 1


class GDSFPolicy(EvictionPolicy):
    """Lowest ``L + freq * cost / size`` goes first; ties go to the least recently touched."""

    name = "gdsf"

    def __init__(self) -> None:
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, int, str]] = []  # lazy: stale rows are skipped on pop
        self._seq = itertools.count()
        self.inflation = 0.0  # "L": priority of the last victim

    def _frequency(self, key: str, entry: _Entry) -> float:
        return entry.hits

    def _touch(self, key: str, entry: _Entry) -> None:
        entry.base = self.inflation
        entry.priority = entry.base + self._frequency(key, entry) * entry.cost / entry.size
        entry.seq = next(self._seq)
        heapq.heappush(self._heap, (entry.priority, entry.seq, key))
        if len(self._heap) > 4 * len(self._entries) + 64:
            self._rebuild()

    def _rebuild(self) -> None:
        self._heap = [(e.priority, e.seq, k) for k, e in self._entries.items()]
        heapq.heapify(self._heap)

    def on_insert(self, key: str, size: int, cost: float) -> None:
        entry = _Entry(size, cost)
        self._entries[key] = entry
        self._touch(key, entry)

    def on_hit(self, key: str) -> None:
        entry = self._entries[key]
        entry.hits += 1
        self._touch(key, entry)

    def on_remove(self, key: str, evicted: bool) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and evicted:
            self.inflation = max(self.inflation, entry.priority)

    def victims(self, need: int, pinned: Set[str]) -> list[str] | None:
        popped: list[tuple[float, int, str]] = []
        out: list[str] = []
        freed = 0
        heap, entries = self._heap, self._entries
        while freed < need and heap:
            row = heapq.heappop(heap)
            entry = entries.get(row[2])
            if entry is None or entry.seq != row[1]:
                continue  # stale row: drop it for good
            popped.append(row)
            if row[2] not in pinned:
                out.append(row[2])
                freed += entry.size
        for row in popped:  # read-only contract: put the live rows back
            heapq.heappush(heap, row)
        return out if freed >= need else None


class TinyLFUGDSFPolicy(GDSFPolicy):
    """GDSF ordering with sketch frequencies, behind a size/cost-aware TinyLFU admission filter."""

    name = "tinylfu-gdsf"

    def __init__(
        self,
        *,
        sketch_width: int = 1 << 15,
        max_count: int = 15,
        sample_factor: int = 32,
        min_sample: int = 1024,
    ) -> None:
        super().__init__()
        # The sketch halves every sample_factor x peak-resident-entries requests: long enough to
        # rank models near the eviction margin (Zipf 0.8 with a 1% cache: 0.943x of the top-C
        # oracle at 16x, 0.973x at 32x), short enough that the 4-bit counts of a model whose
        # traffic stopped drain within four halvings. 32x..64x were within 0.01 of each other on
        # every trace of bench/cache_replay.py; the short end follows drift sooner. (Caffeine's
        # sample is 10x its maximum size.)
        self._sample_factor = sample_factor
        self._min_sample = min_sample
        self._high_water = 0
        self.sketch = FrequencySketch(width=sketch_width, sample_size=min_sample, max_count=max_count)

    def record(self, key: str) -> None:
        resets = self.sketch.resets
        self.sketch.increment(key)
        if self.sketch.resets != resets:
            self._refresh()

    def _refresh(self) -> None:
        # The sketch just halved: re-derive every frequency term from it, keeping each entry's
        # recency base. Otherwise a formerly hot model keeps its old priority until L overtakes
        # it, squatting on memory long after its traffic moved on (the LFU-DA drift problem).
        for key, entry in self._entries.items():
            entry.priority = entry.base + self._frequency(key, entry) * entry.cost / entry.size
        self._rebuild()

    def _frequency(self, key: str, entry: _Entry) -> float:
        return max(self.sketch.estimate(key), 1)

    def on_insert(self, key: str, size: int, cost: float) -> None:
        super().on_insert(key, size, cost)
        if len(self._entries) > self._high_water:
            self._high_water = len(self._entries)
            self.sketch.sample_size = max(self._min_sample, self._sample_factor * self._high_water)

    def admit(self, key: str, size: int, cost: float, victims: list[str]) -> bool:
        # Expected load-seconds saved per period by keeping the newcomer must beat what the
        # victims would cost; ties keep the incumbents (as TinyLFU does).
        if not victims:
            return True
        gain = self.sketch.estimate(key) * max(cost, _MIN_COST)
        loss = 0.0
        for victim in victims:
            entry = self._entries[victim]
            loss += self._frequency(victim, entry) * entry.cost
            if loss >= gain:
                return False
        return True


POLICIES: dict[str, type[EvictionPolicy]] = {p.name: p for p in (TinyLFUGDSFPolicy, LRUPolicy, GDSFPolicy)}
DEFAULT_POLICY = TinyLFUGDSFPolicy.name


def make_policy(name: str) -> EvictionPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown cache policy {name!r}; choose one of {sorted(POLICIES)}") from None
