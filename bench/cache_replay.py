#!/usr/bin/env python
"""Replay generated request traces through ``ModelCache`` and offline references.

Every online policy runs through the real ``ModelCache.get_or_load`` with an instant loader that
advances an injected fake clock by the model's load cost, so the cache measures exactly the trace's
cost. References, computed in the same run on the same trace:

- LRU: ``ModelCache(policy="lru")``. On unit-size traces bytes == count, i.e. Ray Serve's
  multiplexing LRU with ``max_num_models_per_replica = C``. On the size-skewed trace both LRU by bytes
  (same budget) and LRU by count (C = budget / mean model size, as an operator would configure
  Ray Serve) are shown.
- GDSF: ``ModelCache(policy="gdsf")``.
- top-C oracle: keeps the C truly most popular models once loaded and never evicts (it pays the
  cold misses, like any real cache). On the size-skewed trace it keeps the most popular models
  that fit the byte budget: with cost proportional to size that is the best static choice.
- Belady: offline optimal (farthest next use, with bypass) for unit sizes. For the size-skewed trace
  the same rule by bytes: evict farthest-next-use first until the newcomer fits, bypassing it when a
  needed victim is wanted sooner. With cost proportional to size this is the cost-weighted
  Belady-Size ranking (lowest ``cost / (size * next-use distance)`` first); other cost models would
  need that ranking instead. It is a heuristic, not a bound.

Usage: python bench/cache_replay.py [--quick] [--requests N] [--seed S] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass

import numpy as np

from manymodels.cache import DEFAULT_POLICY, ModelCache

MB = 1 << 20
BANDWIDTH = 200 * MB  # load cost = size / 200 MB/s (download + deserialize), i.e. cost ∝ size


@dataclass
class Scenario:
    name: str
    kind: str  # "stationary" | "drift" | "sized"
    trace: np.ndarray  # model ids
    sizes: np.ndarray  # bytes per model id
    costs: np.ndarray  # load seconds per model id
    capacity: int  # bytes
    count: int  # C, capacity in models for LRU-by-count and the oracle
    top: np.ndarray | None = None  # the C most popular ids (stationary only)


@dataclass
class Result:
    scenario: str
    policy: str
    hit_ratio: float
    byte_hit_ratio: float
    load_seconds: float
    peak_over_budget: float | None = None  # peak resident bytes / byte budget (LRU by count)


def zipf_ranks(rng: np.random.Generator, n: int, alpha: float, length: int) -> np.ndarray:
    p = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    return rng.choice(n, size=length, p=p / p.sum())


def unit_sized(
    name: str, kind: str, trace: np.ndarray, n: int, c: int, top: np.ndarray | None = None
) -> Scenario:
    # Every model 1 byte and 1 s to load: byte capacity == count capacity, load-s == misses.
    return Scenario(name, kind, trace, np.ones(n, np.int64), np.ones(n), c, c, top)


def stationary(rng: np.random.Generator, n: int, length: int, alpha: float, frac: float) -> Scenario:
    perm = rng.permutation(n)  # rank -> model id, so ids carry no popularity order
    c = int(n * frac)
    return unit_sized(
        f"zipf a={alpha} cap={frac:.0%}",
        "stationary",
        perm[zipf_ranks(rng, n, alpha, length)],
        n,
        c,
        perm[:c],
    )


def drift(
    rng: np.random.Generator, n: int, length: int, alpha: float, frac: float, phases: int, shift: int
) -> Scenario:
    # Every length/phases requests all ranks move up by `shift`: the `shift` hottest models drop
    # to the cold tail and models from deep in the catalog become hot.
    perm = rng.permutation(n)
    phase = np.arange(length) * phases // length
    ranks = (zipf_ranks(rng, n, alpha, length) + phase * shift) % n
    return unit_sized(
        f"drift a={alpha} cap={frac:.0%} shift={shift}x{phases}", "drift", perm[ranks], n, int(n * frac)
    )


def sized(rng: np.random.Generator, n: int, length: int, alpha: float, frac: float) -> Scenario:
    # Log-normal sizes (median 100 MB, sigma 1.2: 5%..95% ~ 14 MB..720 MB), popularity independent
    # of size, load cost proportional to size.
    sizes = np.maximum(rng.lognormal(np.log(100 * MB), 1.2, n), MB).astype(np.int64)
    capacity = int(sizes.sum() * frac)
    perm = rng.permutation(n)
    # Oracle set: walk models in true popularity order, keeping each that still fits. With cost
    # proportional to size, popularity is also the load-seconds saved per byte, so this greedy
    # knapsack is the best static choice.
    top, used = [], 0
    for i in perm.tolist():
        if used + sizes[i] <= capacity:
            top.append(i)
            used += int(sizes[i])
    return Scenario(
        f"sized a={alpha} cap={frac:.0%} of bytes",
        "sized",
        perm[zipf_ranks(rng, n, alpha, length)],
        sizes,
        sizes / BANDWIDTH,
        capacity,
        int(capacity / sizes.mean()),
        top=np.array(top),
    )


class FakeClock:
    __slots__ = ("now",)

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def replay(sc: Scenario, policy: str, *, by_count: bool = False) -> Result:
    clock = FakeClock()
    sizes = sc.sizes.tolist()
    real = [0, 0]  # bytes really resident now, peak (only tracked when counting models)

    def on_evict(key: str, i: int) -> None:
        real[0] -= sizes[i]

    capacity, notify = (sc.count, on_evict) if by_count else (sc.capacity, None)
    cache: ModelCache[int] = ModelCache(capacity, policy=policy, clock=clock, on_evict=notify)
    missed = [0]
    keys = [f"m{i}" for i in range(len(sizes))]

    def make_loader(i: int, size: int, cost: float) -> Callable[[], Awaitable[tuple[int, int]]]:
        kept = 1 if by_count else size

        async def load() -> tuple[int, int]:
            clock.now += cost
            missed[0] += size
            return i, kept

        return load

    loaders = [make_loader(i, s, float(c)) for i, (s, c) in enumerate(zip(sizes, sc.costs, strict=True))]

    async def run() -> None:
        get = cache.get_or_load
        for i in sc.trace.tolist():
            await get(keys[i], loaders[i])

    async def run_counting() -> None:
        # LRU by count never rejects, so a miss always makes the model resident.
        for i in sc.trace.tolist():
            if keys[i] not in cache:
                real[0] += sizes[i]
            await cache.get_or_load(keys[i], loaders[i])
            real[1] = max(real[1], real[0])

    asyncio.run(run_counting() if by_count else run())
    st = cache.stats()
    total_bytes = int(sc.sizes[sc.trace].sum())
    name, peak = (f"{policy} (by count, C={sc.count})", real[1] / sc.capacity) if by_count else (policy, None)
    return Result(
        sc.name, name, st.hits / len(sc.trace), 1 - missed[0] / total_bytes, st.load_seconds_total, peak
    )


def oracle(sc: Scenario) -> Result:
    assert sc.top is not None
    top = set(sc.top.tolist())
    sizes, costs = sc.sizes.tolist(), sc.costs.tolist()
    resident: set[int] = set()
    hits = missed_bytes = 0
    load = 0.0
    for x in sc.trace.tolist():
        if x in resident:
            hits += 1
            continue
        missed_bytes += sizes[x]
        load += costs[x]
        if x in top:
            resident.add(x)
    label = f"C={sc.count}" if sc.kind != "sized" else f"{len(top)} models filling the budget"
    byte_hits = 1 - missed_bytes / int(sc.sizes[sc.trace].sum())
    return Result(sc.name, f"top-C oracle ({label})", hits / len(sc.trace), byte_hits, load)


def next_uses(trace: np.ndarray) -> np.ndarray:
    """For each position, the index of the next request for the same id (len(trace) if none)."""
    order = np.argsort(trace, kind="stable")
    ids = trace[order]
    nxt_sorted = np.full(len(trace), len(trace), dtype=np.int64)
    same = ids[:-1] == ids[1:]
    nxt_sorted[:-1][same] = order[1:][same]
    nxt = np.empty_like(nxt_sorted)
    nxt[order] = nxt_sorted
    return nxt


def belady(sc: Scenario) -> Result:
    """Farthest-next-use eviction with bypass, by bytes (exact optimum when sizes are all 1)."""
    sizes, costs = sc.sizes.tolist(), sc.costs.tolist()
    nxt_all = next_uses(sc.trace).tolist()
    resident: dict[int, int] = {}  # id -> its next use
    heap: list[tuple[int, int]] = []  # (-next use, id), lazy
    used = hits = missed_bytes = 0
    load = 0.0
    for x, nx in zip(sc.trace.tolist(), nxt_all, strict=True):
        if x in resident:
            hits += 1
            resident[x] = nx
            heapq.heappush(heap, (-nx, x))
            continue
        size = sizes[x]
        missed_bytes += size
        load += costs[x]
        if size > sc.capacity:
            continue
        victims: list[tuple[int, int]] = []
        free = sc.capacity - used
        admit = True
        while free < size:
            neg, y = heapq.heappop(heap)
            if resident.get(y) != -neg:
                continue  # stale
            if -neg <= nx:  # a needed victim is wanted sooner than the newcomer: bypass it
                heapq.heappush(heap, (neg, y))
                admit = False
                break
            victims.append((neg, y))
            free += sizes[y]
        if not admit:
            for row in victims:
                heapq.heappush(heap, row)
            continue
        for _, y in victims:
            del resident[y]
            used -= sizes[y]
        resident[x] = nx
        used += size
        heapq.heappush(heap, (-nx, x))
    total = int(sc.sizes[sc.trace].sum())
    return Result(
        sc.name,
        "Belady" if sc.kind != "sized" else "Belady-size (approx.)",
        hits / len(sc.trace),
        1 - missed_bytes / total,
        load,
    )


def scenarios(rng: np.random.Generator, n: int, length: int) -> list[Scenario]:
    out = [stationary(rng, n, length, a, f) for a in (0.8, 1.0, 1.2) for f in (0.01, 0.05, 0.10)]
    out.append(drift(rng, n, length, 1.0, 0.05, phases=20, shift=max(n // 200, 1)))
    out.append(sized(rng, n, length, 1.0, 0.05))
    return out


def run_scenario(sc: Scenario) -> tuple[list[Result], list[tuple[str, float, float, bool]]]:
    prod = replay(sc, DEFAULT_POLICY)
    lru = replay(sc, "lru")
    gdsf = replay(sc, "gdsf")
    best = belady(sc)
    rows = [prod, gdsf, lru]
    checks: list[tuple[str, float, float, bool]] = []
    if sc.top is not None:
        top = oracle(sc)
        rows.append(top)
    if sc.kind == "stationary":
        r = prod.hit_ratio / top.hit_ratio
        checks.append((f"{sc.name}: hit ratio >= 0.95x top-C oracle", r, 0.95, r >= 0.95))
    if sc.kind == "drift":
        r = prod.hit_ratio / best.hit_ratio
        checks.append((f"{sc.name}: hit ratio >= 0.85x Belady", r, 0.85, r >= 0.85))
    if sc.kind == "sized":
        lru_count = replay(sc, "lru", by_count=True)
        rows.append(lru_count)
        for ref, limit in ((gdsf, 0.9), (lru_count, 0.75), (lru, 0.75)):
            r = prod.load_seconds / ref.load_seconds
            checks.append((f"{sc.name}: load-s <= {limit}x {ref.policy}", r, limit, r <= limit))
    rows.append(best)
    return rows, checks


def table(rows: list[Result]) -> str:
    refs: dict[tuple[str, str], Result] = {}
    for r in rows:
        refs[(r.scenario, r.policy.split(" ")[0])] = r
    lines = [
        "| scenario | policy | hit ratio | byte hit ratio | load-s | hit / oracle | "
        "hit / Belady | load-s / LRU | load-s / GDSF |",
        "|" + "---|" * 9,
    ]

    def ratio(a: float, ref: Result | None, attr: str) -> str:
        return f"{a / getattr(ref, attr):.3f}" if ref and getattr(ref, attr) else "-"

    for r in rows:
        top = refs.get((r.scenario, "top-C"))
        bel = refs.get((r.scenario, "Belady")) or refs.get((r.scenario, "Belady-size"))
        lines.append(
            f"| {r.scenario} | {r.policy} | {r.hit_ratio:.4f} | {r.byte_hit_ratio:.4f} | "
            f"{r.load_seconds:,.0f} | {ratio(r.hit_ratio, top, 'hit_ratio')} | "
            f"{ratio(r.hit_ratio, bel, 'hit_ratio')} | "
            f"{ratio(r.load_seconds, refs.get((r.scenario, 'lru')), 'load_seconds')} | "
            f"{ratio(r.load_seconds, refs.get((r.scenario, 'gdsf')), 'load_seconds')} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small catalog and trace (smoke test)")
    ap.add_argument("--requests", type=int, help="trace length (default 200000, quick 20000)")
    ap.add_argument("--catalog", type=int, help="models in the catalog (default 10000, quick 1000)")
    ap.add_argument("--seed", type=int, default=20261123)
    ap.add_argument("--json", help="also write rows and target checks to this file")
    args = ap.parse_args(argv)
    n = args.catalog or (1000 if args.quick else 10_000)
    length = args.requests or (20_000 if args.quick else 200_000)
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    rows: list[Result] = []
    checks: list[tuple[str, float, float, bool]] = []
    for sc in scenarios(rng, n, length):
        r, c = run_scenario(sc)
        rows += r
        checks += c
    print(f"catalog={n} requests={length} seed={args.seed} production policy={DEFAULT_POLICY}\n")
    print(table(rows))
    for r in rows:
        if r.peak_over_budget is not None:
            print(
                f"\n{r.scenario}: {r.policy} peaked at {r.peak_over_budget:.2f}x the byte budget"
                " (a count cannot bound memory when sizes differ)"
            )
    print("\n| target | measured | limit | result |\n|---|---|---|---|")
    for name, value, limit, ok in checks:
        print(f"| {name} | {value:.3f} | {limit} | {'PASS' if ok else 'FAIL'} |")
    print(
        f"\n{sum(ok for *_, ok in checks)}/{len(checks)} targets met; {time.perf_counter() - started:.1f} s"
    )
    if args.json:
        fields = ("target", "value", "limit", "ok")
        out = {
            "rows": [asdict(r) for r in rows],
            "checks": [dict(zip(fields, c, strict=True)) for c in checks],
        }
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
