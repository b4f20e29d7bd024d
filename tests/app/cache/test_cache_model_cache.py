"""ModelCache behaviour: accounting, admission, pinning, single-flight and failure handling."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

from manymodels.cache import ModelCache
from manymodels.errors import CacheFull


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def loader(
    value: object,
    size: int,
    calls: list[str] | None = None,
    *,
    clock: FakeClock | None = None,
    cost: float = 0.0,
) -> Callable[[], Awaitable[tuple[object, int]]]:
    async def load() -> tuple[object, int]:
        if calls is not None:
            calls.append(str(value))
        if clock is not None:
            clock.now += cost
        return value, size

    return load


def run(coro: Awaitable[object]) -> object:
    async def main() -> object:
        return await coro

    return asyncio.run(main())


def fill(cache: ModelCache, sizes: dict[str, int]) -> None:
    async def main() -> None:
        for key, size in sizes.items():
            await cache.get_or_load(key, loader(key, size))

    asyncio.run(main())


def test_hits_misses_and_load_seconds_are_counted() -> None:
    clock = FakeClock()
    cache: ModelCache[str] = ModelCache(100, clock=clock)
    calls: list[str] = []

    async def main() -> None:
        assert await cache.get_or_load("a", loader("A", 10, calls, clock=clock, cost=2.5)) == "A"
        assert await cache.get_or_load("a", loader("X", 10, calls)) == "A"
        assert await cache.get_or_load("a", loader("X", 10, calls)) == "A"
        assert await cache.get_or_load("b", loader("B", 20, calls, clock=clock, cost=1.0)) == "B"

    asyncio.run(main())
    st = cache.stats()
    assert calls == ["A", "B"]
    assert (st.hits, st.misses, st.loads, st.load_failures, st.evictions) == (2, 2, 2, 0, 0)
    assert st.load_seconds_total == pytest.approx(3.5)
    assert (st.resident_bytes, st.capacity_bytes, st.entries, st.pinned) == (30, 100, 2, 0)
    assert st.hit_ratio == pytest.approx(0.5)
    assert sorted(cache.resident()) == [("a", 10), ("b", 20)]
    assert "a" in cache and "zzz" not in cache and sorted(cache.keys()) == ["a", "b"]


def test_peek_returns_value_without_touching_stats() -> None:
    cache: ModelCache[str] = ModelCache(10)
    fill(cache, {"a": 1})
    before = cache.stats()
    assert cache.peek("a") == "a"
    assert cache.peek("missing") is None
    assert cache.stats() == before


@pytest.mark.parametrize("policy", ["tinylfu-gdsf", "lru", "gdsf"])
def test_byte_capacity_is_never_exceeded(policy: str) -> None:
    rng = random.Random(7)
    sizes = {f"m{i}": rng.randrange(50, 400) for i in range(80)}
    cache: ModelCache[str] = ModelCache(1000, policy=policy)

    async def main() -> None:
        for _ in range(2000):
            key = f"m{int(rng.paretovariate(1.0)) % 80}"
            await cache.get_or_load(key, loader(key, sizes[key]))
            resident = cache.resident()
            assert sum(s for _, s in resident) == cache.stats().resident_bytes <= 1000

    asyncio.run(main())
    st = cache.stats()
    assert st.evictions > 0 and st.hits > 0


def test_frequent_small_model_survives_a_one_off_scan() -> None:
    cache: ModelCache[str] = ModelCache(10)

    async def main() -> None:
        for _ in range(20):
            await cache.get_or_load("hot", loader("hot", 1))
        for i in range(200):  # each scanned model is requested exactly once
            await cache.get_or_load(f"scan{i}", loader(i, 2))

    asyncio.run(main())
    assert "hot" in cache
    assert cache.stats().rejected > 0  # one-offs were turned away rather than evicting "hot"


def test_rejected_admission_still_returns_the_value() -> None:
    # A fake clock: with the wall clock the load costs (and so admission) varied with machine load.
    clock = FakeClock()
    cache: ModelCache[str] = ModelCache(2, clock=clock)

    async def main() -> str:
        for _ in range(5):
            await cache.get_or_load("a", loader("a", 1, clock=clock, cost=1.0))
            await cache.get_or_load("b", loader("b", 1, clock=clock, cost=1.0))
        return await cache.get_or_load("newcomer", loader("N", 1, clock=clock, cost=1.0))

    assert run(main()) == "N"
    st = cache.stats()
    assert "newcomer" not in cache and sorted(cache.keys()) == ["a", "b"]
    assert (st.rejected, st.loads, st.misses, st.evictions) == (1, 3, 3, 0)


def test_on_evict_is_notified_and_a_failing_callback_does_not_break_the_cache() -> None:
    seen: list[tuple[str, object]] = []

    def on_evict(key: str, value: object) -> None:
        seen.append((key, value))
        raise RuntimeError("observer bug")

    cache: ModelCache[str] = ModelCache(2, policy="lru", on_evict=on_evict)
    fill(cache, {"a": 1, "b": 1, "c": 1})
    assert seen == [("a", "a")]
    assert sorted(cache.keys()) == ["b", "c"]


def test_pinned_model_is_never_evicted_and_pin_may_precede_load() -> None:
    cache: ModelCache[str] = ModelCache(4)
    cache.pin("p")
    assert cache.stats().pinned == 1

    async def main() -> None:
        for _ in range(10):  # make residents hot so an unpinned cold newcomer would be rejected
            for k in ("a", "b", "c", "d"):
                await cache.get_or_load(k, loader(k, 1))
        await cache.get_or_load("p", loader("p", 1))  # cold but pinned: admitted without a vote
        for i in range(100):
            await cache.get_or_load(f"s{i % 10}", loader(i, 1))

    asyncio.run(main())
    assert "p" in cache
    cache.unpin("p")
    assert cache.stats().pinned == 0


def test_cache_full_when_everything_else_is_pinned() -> None:
    cache: ModelCache[str] = ModelCache(2)
    cache.pin("a")
    cache.pin("b")
    fill(cache, {"a": 1, "b": 1})
    with pytest.raises(CacheFull) as err:
        run(cache.get_or_load("c", loader("c", 1)))
    assert "'c'" in str(err.value) and "1 bytes" in str(err.value) and "2 bytes" in str(err.value)
    assert "c" not in cache and sorted(cache.keys()) == ["a", "b"]
    assert cache.stats().rejected == 1


def test_cache_full_when_model_exceeds_capacity_reaches_every_waiter() -> None:
    released: list[tuple[str, str]] = []
    cache: ModelCache[str] = ModelCache(10, on_evict=lambda k, v: released.append((k, v)))

    async def main() -> list[object]:
        opened = asyncio.Event()

        async def big() -> tuple[str, int]:
            await opened.wait()
            return "big", 11

        tasks = [asyncio.create_task(cache.get_or_load("big", big)) for _ in range(3)]
        await asyncio.sleep(0)
        opened.set()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, CacheFull) for r in results)  # type: ignore[union-attr]
    msg = str(results[0])  # type: ignore[index]
    assert "'big'" in msg and "11 bytes" in msg and "10 bytes" in msg
    st = cache.stats()
    assert "big" not in cache and st.resident_bytes == 0 and st.loads == 1
    assert released == [("big", "big")]  # loaded, refused, received by nobody: its owner may close it


def test_prefetch_counts_as_load_not_miss_and_bypasses_rejection() -> None:
    cache: ModelCache[str] = ModelCache(2)
    calls: list[str] = []

    async def main() -> None:
        for _ in range(5):
            await cache.get_or_load("a", loader("a", 1))
            await cache.get_or_load("b", loader("b", 1))
        await cache.prefetch("cold", loader("cold", 1, calls))
        await cache.prefetch("cold", loader("cold", 1, calls))  # resident: no second load

    asyncio.run(main())
    st = cache.stats()
    assert "cold" in cache and calls == ["cold"]
    assert (st.misses, st.loads, st.rejected, st.evictions) == (2, 3, 0, 1)


def test_discard_unloads_unpins_and_notifies() -> None:
    evicted: list[str] = []
    cache: ModelCache[str] = ModelCache(10, on_evict=lambda k, v: evicted.append(k))
    cache.pin("a")
    fill(cache, {"a": 3, "b": 3})
    assert cache.discard("a") is True
    assert cache.discard("a") is False
    st = cache.stats()
    assert evicted == ["a"] and "a" not in cache
    assert (st.pinned, st.resident_bytes, st.evictions) == (0, 3, 0)


def test_discard_during_load_returns_value_but_does_not_keep_it() -> None:
    cache: ModelCache[str] = ModelCache(10)

    async def main() -> str:
        opened = asyncio.Event()

        async def slow() -> tuple[str, int]:
            await opened.wait()
            return "v", 1

        task = asyncio.create_task(cache.get_or_load("k", slow))
        await asyncio.sleep(0)
        assert cache.loading_keys() == ["k"]
        assert cache.discard("k") is False
        opened.set()
        return await task

    assert run(main()) == "v"
    assert "k" not in cache and cache.loading_keys() == []


def test_resize_evicts_down_to_the_new_budget_but_keeps_pins() -> None:
    evicted: list[str] = []
    cache: ModelCache[str] = ModelCache(8, policy="lru", on_evict=lambda k, v: evicted.append(k))
    fill(cache, {"a": 2, "b": 2, "c": 2, "d": 2})
    cache.pin("a")
    cache.resize(4)
    st = cache.stats()
    assert (st.capacity_bytes, st.resident_bytes, st.evictions) == (4, 4, 2)
    assert evicted == ["b", "c"] and sorted(cache.keys()) == ["a", "d"]
    cache.resize(0)
    assert cache.keys() == ["a"]  # pinned: kept even over budget
    cache.resize(100)
    fill(cache, {"e": 50})
    assert "e" in cache
    with pytest.raises(ValueError):
        cache.resize(-1)


def test_single_flight_one_loader_call_for_ten_waiters() -> None:
    cache: ModelCache[str] = ModelCache(10)
    calls: list[str] = []

    async def main() -> list[str]:
        opened = asyncio.Event()

        async def slow() -> tuple[str, int]:
            calls.append("k")
            await opened.wait()
            return "v", 1

        tasks = [asyncio.create_task(cache.get_or_load("k", slow)) for _ in range(10)]
        await asyncio.sleep(0)
        assert cache.loading_keys() == ["k"] and "k" not in cache
        opened.set()
        return await asyncio.gather(*tasks)

    assert run(main()) == ["v"] * 10
    st = cache.stats()
    assert calls == ["k"] and (st.loads, st.misses, st.hits) == (1, 10, 0)
    assert cache.loading_keys() == []


def test_different_keys_load_concurrently() -> None:
    # Each loader waits for an event only the other one sets: a global load lock would deadlock.
    cache: ModelCache[str] = ModelCache(10)

    async def main() -> list[str]:
        a_may_finish, b_may_finish = asyncio.Event(), asyncio.Event()

        async def load_a() -> tuple[str, int]:
            b_may_finish.set()
            await a_may_finish.wait()
            return "A", 1

        async def load_b() -> tuple[str, int]:
            a_may_finish.set()
            await b_may_finish.wait()
            return "B", 1

        return await asyncio.wait_for(
            asyncio.gather(cache.get_or_load("a", load_a), cache.get_or_load("b", load_b)), 5
        )

    assert run(main()) == ["A", "B"]


def test_failed_load_reaches_every_waiter_caches_nothing_and_retries() -> None:
    cache: ModelCache[str] = ModelCache(10)
    calls: list[str] = []

    async def main() -> tuple[list[object], str]:
        opened = asyncio.Event()

        async def broken() -> tuple[str, int]:
            calls.append("broken")
            await opened.wait()
            raise OSError("artifact unreadable")

        tasks = [asyncio.create_task(cache.get_or_load("k", broken)) for _ in range(3)]
        await asyncio.sleep(0)
        opened.set()
        errors = await asyncio.gather(*tasks, return_exceptions=True)
        assert "k" not in cache and cache.loading_keys() == []
        return errors, await cache.get_or_load("k", loader("ok", 1, calls))

    errors, value = run(main())  # type: ignore[misc]
    assert all(isinstance(e, OSError) for e in errors) and value == "ok"
    st = cache.stats()
    assert calls == ["broken", "ok"] and (st.load_failures, st.loads) == (1, 1)


def test_invalid_size_from_loader_is_a_load_failure() -> None:
    cache: ModelCache[str] = ModelCache(10)
    with pytest.raises(ValueError, match="invalid size"):
        run(cache.get_or_load("k", loader("v", -1)))
    assert cache.stats().load_failures == 1 and "k" not in cache


def test_cancelled_leader_hands_the_load_to_a_waiter() -> None:
    cache: ModelCache[str] = ModelCache(10)
    calls: list[str] = []

    async def main() -> str:
        never = asyncio.Event()

        async def hangs() -> tuple[str, int]:
            calls.append("leader")
            await never.wait()
            return "never", 1

        leader = asyncio.create_task(cache.get_or_load("k", hangs))
        await asyncio.sleep(0)
        waiter = asyncio.create_task(cache.get_or_load("k", loader("w", 1, calls)))
        await asyncio.sleep(0)
        leader.cancel()
        value = await asyncio.wait_for(waiter, 5)
        assert leader.cancelled()
        return value

    assert run(main()) == "w"
    assert calls == ["leader", "w"] and "k" in cache


def test_bad_configuration_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown cache policy"):
        ModelCache(10, policy="fifo")
    with pytest.raises(ValueError):
        ModelCache(-5)
