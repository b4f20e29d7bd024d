"""A byte-budgeted, single-flight, asyncio model cache with a pluggable eviction policy.

Concurrency model: everything that changes residency runs synchronously between awaits, so the
event loop is the only lock. Loads are the only awaits; each key has at most one in-flight load (a
"flight") that later callers join, and different keys load in parallel. Pure Python, no Ray.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from manymodels.errors import CacheFull

from .policy import DEFAULT_POLICY, make_policy
from .stats import CacheStats

V = TypeVar("V")
Loader = Callable[[], Awaitable[tuple[V, int]]]

log = logging.getLogger(__name__)
_MISSING: Any = object()


class _LeaderGone(Exception):
    """The caller running a load was cancelled; joiners retry (one of them becomes the leader)."""


@dataclass
class _Flight:
    future: asyncio.Future[Any]
    force: bool = False  # a prefetch asked for it: skip the admission vote
    discarded: bool = False  # discard() arrived mid-load: do not keep the result


def _fail(future: asyncio.Future[Any], exc: BaseException) -> None:
    future.set_exception(exc)
    future.exception()  # mark retrieved: with no joiners asyncio would log "never retrieved"


class ModelCache(Generic[V]):
    """Keeps loaded models resident within ``capacity_bytes``; see ``policy.py`` for the policies.

    ``on_evict(key, value)`` is a notification sent after a value left the cache (eviction, resize
    or discard), or was loaded and refused with ``CacheFull`` (then no caller receives it). Callers may
    still hold and use an evicted value, so the callback must not close it under them. Values that
    were loaded but not admitted are returned to their callers and not notified. Use from one event loop: the
    cache is not thread-safe.
    """

    def __init__(
        self,
        capacity_bytes: int,
        *,
        policy: str = DEFAULT_POLICY,
        clock: Callable[[], float] = time.perf_counter,
        on_evict: Callable[[str, V], None] | None = None,
    ) -> None:
        _check_capacity(capacity_bytes)
        self._capacity = capacity_bytes
        self._policy = make_policy(policy)
        self.policy_name = policy
        self._clock = clock
        self._on_evict = on_evict
        self._values: dict[str, V] = {}
        self._sizes: dict[str, int] = {}
        self._resident_bytes = 0
        self._pinned: set[str] = set()
        self._flights: dict[str, _Flight] = {}
        self._hits = self._misses = self._evictions = 0
        self._loads = self._load_failures = self._rejected = 0
        self._load_seconds = 0.0

    # -- requests -------------------------------------------------------------------------------

    async def get_or_load(self, key: str, loader: Loader[V]) -> V:
        """The resident value, or ``loader()``'s value after loading it (kept if admitted)."""
        self._policy.record(key)
        value = self._values.get(key, _MISSING)
        if value is not _MISSING:
            self._hits += 1
            self._policy.on_hit(key)
            return value
        self._misses += 1
        return await self._load(key, loader, force=False)

    async def prefetch(self, key: str, loader: Loader[V]) -> None:
        """Load and keep ``key`` unless resident; the admission vote is skipped (eviction is not)."""
        if key not in self._values:
            await self._load(key, loader, force=True)

    def peek(self, key: str) -> V | None:
        return self._values.get(key)

    async def _load(self, key: str, loader: Loader[V], *, force: bool) -> V:
        while True:
            value = self._values.get(key, _MISSING)
            if value is not _MISSING:  # a retried joiner found it loaded by someone else
                return value
            flight = self._flights.get(key)
            if flight is None:
                return await self._lead(key, loader, force)
            flight.force = flight.force or force
            try:
                # shield: a cancelled joiner must not cancel the load everyone else awaits
                return await asyncio.shield(flight.future)
            except _LeaderGone:
                continue

    async def _lead(self, key: str, loader: Loader[V], force: bool) -> V:
        flight = _Flight(asyncio.get_running_loop().create_future(), force=force)
        self._flights[key] = flight
        start = self._clock()
        try:
            try:
                value, size = await loader()
                if not isinstance(size, int) or size < 0:
                    raise ValueError(f"loader for {key!r} returned an invalid size {size!r}")
            except Exception as exc:
                self._load_failures += 1
                self._load_seconds += self._clock() - start
                _fail(flight.future, exc)
                raise
            cost = self._clock() - start
            self._loads += 1
            self._load_seconds += cost
            try:
                evicted = self._admit(key, value, size, cost, flight)
            except CacheFull as exc:
                _fail(flight.future, exc)
                self._notify([(key, value)])  # nobody receives it: its owner may release it now
                raise
            flight.future.set_result(value)
        finally:
            del self._flights[key]
            if not flight.future.done():  # cancelled (or a BaseException) mid-load
                _fail(flight.future, _LeaderGone())
        self._notify(evicted)
        return value

    # -- residency ------------------------------------------------------------------------------

    def _admit(self, key: str, value: V, size: int, cost: float, flight: _Flight) -> list[tuple[str, V]]:
        """Keep ``value`` if it fits and is admitted; returns the evicted (key, value) pairs."""
        if flight.discarded:
            return []
        if size > self._capacity:
            self._rejected += 1
            raise CacheFull(
                f"model {key!r} needs {size} bytes, more than the cache capacity of {self._capacity} bytes"
            )
        need = self._resident_bytes + size - self._capacity
        victims: list[str] = []
        if need > 0:
            found = self._policy.victims(need, self._pinned)
            if found is None:
                self._rejected += 1
                raise CacheFull(
                    f"model {key!r} needs {size} bytes but only "
                    f"{max(self._capacity - self._pinned_bytes(), 0)} of the cache capacity of "
                    f"{self._capacity} bytes are not pinned"
                )
            victims = found
        pinned = key in self._pinned
        if not (flight.force or pinned) and not self._policy.admit(key, size, cost, victims):
            self._rejected += 1
            return []
        evicted = [self._remove(victim, evicted=True) for victim in victims]
        self._values[key] = value
        self._sizes[key] = size
        self._resident_bytes += size
        self._policy.on_insert(key, size, cost)
        return evicted

    def _remove(self, key: str, *, evicted: bool) -> tuple[str, V]:
        value = self._values.pop(key)
        self._resident_bytes -= self._sizes.pop(key)
        self._policy.on_remove(key, evicted)
        if evicted:
            self._evictions += 1
        return key, value

    def _notify(self, removed: list[tuple[str, V]]) -> None:
        # After the state change, so a callback sees a consistent cache and cannot break one.
        if self._on_evict is None:
            return
        for key, value in removed:
            try:
                self._on_evict(key, value)
            except Exception:
                log.exception("on_evict callback failed for %r", key)

    def _pinned_bytes(self) -> int:
        return sum(self._sizes[k] for k in self._pinned if k in self._sizes)

    def pin(self, key: str) -> None:
        """Never evict ``key``; may precede its load (it is then admitted without a vote)."""
        self._pinned.add(key)

    def unpin(self, key: str) -> None:
        self._pinned.discard(key)

    def discard(self, key: str) -> bool:
        """Unload and unpin ``key``; a load in flight for it completes but is not kept."""
        self._pinned.discard(key)
        flight = self._flights.get(key)
        if flight is not None:
            flight.discarded = True
        if key not in self._values:
            return False
        self._notify([self._remove(key, evicted=False)])
        return True

    def resize(self, capacity_bytes: int) -> None:
        """Change the budget live, evicting down to it; pinned entries stay even if over budget."""
        _check_capacity(capacity_bytes)
        self._capacity = capacity_bytes
        need = self._resident_bytes - capacity_bytes
        if need <= 0:
            return
        victims = self._policy.victims(need, self._pinned)
        if victims is None:
            victims = [k for k in self._values if k not in self._pinned]
        self._notify([self._remove(victim, evicted=True) for victim in victims])

    # -- introspection --------------------------------------------------------------------------

    def __contains__(self, key: str) -> bool:
        return key in self._values

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._values)

    def loading_keys(self) -> list[str]:
        return list(self._flights)

    def resident(self) -> list[tuple[str, int]]:
        return list(self._sizes.items())

    def stats(self) -> CacheStats:
        return CacheStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            loads=self._loads,
            load_failures=self._load_failures,
            rejected=self._rejected,
            load_seconds_total=self._load_seconds,
            resident_bytes=self._resident_bytes,
            capacity_bytes=self._capacity,
            entries=len(self._values),
            pinned=len(self._pinned),
        )


def _check_capacity(capacity_bytes: int) -> None:
    if not isinstance(capacity_bytes, int) or capacity_bytes < 0:
        raise ValueError(f"capacity_bytes must be a non-negative int, got {capacity_bytes!r}")
