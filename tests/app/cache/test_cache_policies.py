"""Each named policy evicts the way its name says, through the same ModelCache."""

from __future__ import annotations

import asyncio

import pytest

from manymodels.cache import DEFAULT_POLICY, POLICIES, ModelCache, make_policy


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


_clocks: dict[int, FakeClock] = {}


def new_cache(policy: str, capacity: int) -> ModelCache:
    clock = FakeClock()
    cache: ModelCache[str] = ModelCache(capacity, policy=policy, clock=clock)
    _clocks[id(cache)] = clock
    return cache


def request(cache: ModelCache, key: str, size: int = 1, cost: float = 1.0) -> None:
    """One get_or_load whose loader takes ``cost`` seconds on the cache's fake clock."""
    clock = _clocks[id(cache)]

    async def load() -> tuple[str, int]:
        clock.now += cost
        return key, size

    asyncio.run(cache.get_or_load(key, load))


def test_registry_names_and_default() -> None:
    assert DEFAULT_POLICY == "tinylfu-gdsf"
    assert {"tinylfu-gdsf", "lru", "gdsf"} <= set(POLICIES)
    for name in POLICIES:
        assert make_policy(name).name == name
    with pytest.raises(ValueError, match="choose one of"):
        make_policy("random")


def test_lru_evicts_least_recently_used_even_if_most_frequent() -> None:
    cache = new_cache("lru", 3)
    for _ in range(5):
        request(cache, "a")
    request(cache, "b")
    request(cache, "c")
    request(cache, "d")
    assert sorted(cache.keys()) == ["b", "c", "d"]


def test_lru_frees_bytes_not_slots() -> None:
    cache = new_cache("lru", 4)
    for key in "abcd":
        request(cache, key)
    request(cache, "big", size=3)
    assert sorted(cache.keys()) == ["big", "d"]
    assert cache.stats().evictions == 3


def test_gdsf_prefers_keeping_the_expensive_model() -> None:
    gdsf, lru = new_cache("gdsf", 10), new_cache("lru", 10)
    for cache in (gdsf, lru):
        request(cache, "slow", size=5, cost=8.0)  # older but 8x costlier to reload
        request(cache, "fast", size=5, cost=1.0)
        request(cache, "new", size=5, cost=1.0)
    assert sorted(gdsf.keys()) == ["new", "slow"]
    assert sorted(lru.keys()) == ["fast", "new"]


def test_gdsf_prefers_keeping_the_frequent_model() -> None:
    cache = new_cache("gdsf", 2)
    request(cache, "often")
    for _ in range(3):
        request(cache, "often")
    request(cache, "once")
    request(cache, "new")
    assert sorted(cache.keys()) == ["new", "often"]


def test_gdsf_charges_size() -> None:
    # Same hits and cost: the big model holds more bytes per second of load saved, so it goes.
    cache = new_cache("gdsf", 10)
    request(cache, "small", size=2)
    request(cache, "big", size=6)
    request(cache, "new", size=4)
    assert sorted(cache.keys()) == ["new", "small"]


@pytest.mark.parametrize("policy, survives", [("tinylfu-gdsf", True), ("gdsf", False), ("lru", False)])
def test_only_the_frequency_filter_survives_a_long_scan(policy: str, survives: bool) -> None:
    cache = new_cache(policy, 10)
    for _ in range(20):
        request(cache, "hot")
    for i in range(300):
        request(cache, f"scan{i}", size=2)
    assert ("hot" in cache) is survives


def test_tinylfu_gdsf_admits_a_newcomer_once_it_outweighs_the_cheapest_victim() -> None:
    cache = new_cache("tinylfu-gdsf", 2)
    for _ in range(3):
        request(cache, "costly", cost=10.0)
        request(cache, "cheap", cost=1.0)
    for expected_resident in (False, False, False, True):
        request(cache, "rising", cost=1.0)
        assert ("rising" in cache) is expected_resident
    # The victim was the cheap model (3 requests x 1 s), never the costly one (3 x 10 s).
    assert sorted(cache.keys()) == ["costly", "rising"]
    assert cache.stats().rejected == 3


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_victims_is_read_only_and_respects_pins(name: str) -> None:
    policy = make_policy(name)
    for key in "abc":
        policy.record(key)
        policy.on_insert(key, 2, 1.0)
    first = policy.victims(3, set())
    assert first is not None and len(first) == 2
    assert policy.victims(3, set()) == first
    remaining = policy.victims(3, {first[0]})
    assert remaining is not None and first[0] not in remaining
    assert policy.victims(3, {"a", "b"}) is None
    assert policy.victims(2, {"a", "b"}) == ["c"]
