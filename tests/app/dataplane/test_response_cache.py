"""The response cache: keys, byte accounting, LRU, private copies; its use by the DataPlane (opt-in,
versions, live config) and over HTTP (/predict answered from it, metrics, a version switch).
"""

from __future__ import annotations

import asyncio
import gc
import shutil
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pydantic
import pytest
from metric_page import metric
from planes import serve

from manymodels.config import ServerConfig
from manymodels.dataplane import DataPlane
from manymodels.dataplane.response_cache import (
    MAX_ENTRY_FRACTION,
    ResponseCache,
    response_key,
)
from manymodels.processors import Processor

T = TypeVar("T")
ROWS = np.random.default_rng(3).standard_normal((4, 64)).astype(np.float32)
CACHED = {"response_cache": True}


def make_config(root: Path, **overrides: Any) -> ServerConfig:
    raw: dict[str, Any] = {"store": {"uri": str(root), "refresh_interval_s": 0}}
    raw.update(overrides)
    return ServerConfig.model_validate(raw)


def key(values: Any, dtype: str = "float32", *, name: str = "input", version: str = "1") -> bytes:
    digest = response_key("m", version, {name: np.asarray(values, dtype=dtype)})
    assert digest is not None
    return digest


def logits(seed: int, n: int = 10) -> dict[str, np.ndarray]:
    return {"logits": np.random.default_rng(seed).standard_normal((1, n)).astype(np.float32)}


# ---- keys ----------------------------------------------------------------------------------------


def test_keys_cover_model_version_and_every_input_byte() -> None:
    base = key([[1.0, 2.0, 3.0, 4.0]])
    assert key([[1.0, 2.0, 3.0, 4.0]]) == base  # same bytes, same key
    assert key([[1.0, 2.0, 3.0, 4.5]]) != base
    assert key([[1.0, 2.0], [3.0, 4.0]]) != base  # same bytes, other shape
    assert key([1.0, 2.0, 3.0, 4.0]) != base  # other rank
    assert key([[1.0, 2.0, 3.0, 4.0]], version="2") != base
    assert key([[1.0, 2.0, 3.0, 4.0]], name="other") != base
    assert response_key("n", "1", {"input": np.asarray([[1.0, 2.0, 3.0, 4.0]], np.float32)}) != base
    # Identical raw bytes under another dtype: zeros are zeros in float32 and int32.
    assert key(np.zeros((1, 4)), "float32") != key(np.zeros((1, 4)), "int32")
    assert key([[1, 2]], ">i4") != key([[1, 2]], "<i4")  # byte order is part of the dtype
    # A strided view hashes like its contiguous copy (its values, not its memory layout).
    wide = np.arange(16, dtype=np.float32).reshape(4, 4)
    assert response_key("m", "1", {"x": wide[:, ::2]}) == response_key(
        "m", "1", {"x": np.ascontiguousarray(wide[:, ::2])}
    )
    # Several inputs: order-independent, but moving bytes between inputs is another key.
    a, b = np.arange(4, dtype=np.float32), np.arange(4, 8, dtype=np.float32)
    assert response_key("m", "1", {"a": a, "b": b}) == response_key("m", "1", {"b": b, "a": a})
    assert response_key("m", "1", {"a": a, "b": b}) != response_key("m", "1", {"a": b, "b": a})


def test_keys_of_text_inputs_hash_the_values() -> None:
    def text_key(*items: Any) -> bytes | None:
        return response_key("m", "1", {"text": np.array(items, dtype=object)})

    assert text_key(b"ab", b"c") == text_key(b"ab", b"c")
    assert text_key(b"ab", b"c") != text_key(b"a", b"bc")  # length-prefixed items
    assert text_key(b"ab") != text_key("ab")  # bytes and str are different inputs
    assert text_key(object()) is None  # no stable bytes: not cacheable
    assert response_key("m", "1", {"t": np.array([b"ab"])}) != response_key("m", "1", {"t": np.array(["ab"])})


# ---- the cache itself ----------------------------------------------------------------------------


def test_a_hit_returns_equal_private_copies() -> None:
    cache = ResponseCache(2**20)
    outputs = logits(0)
    expected = outputs["logits"].copy()
    assert cache.get("m", b"k") is None
    assert cache.put("m", "1", b"k", outputs, cache.generation)
    outputs["logits"][:] = 0  # the caller keeps using what the model gave it
    first = cache.get("m", b"k")
    assert first is not None
    np.testing.assert_array_equal(first["logits"], expected)
    first["logits"] *= -1  # e.g. a postprocess working in place: allowed, and private
    second = cache.get("m", b"k")
    assert second is not None
    np.testing.assert_array_equal(second["logits"], expected)
    assert second["logits"].flags.writeable
    stored = cache._entries[b"k"].outputs["logits"]
    assert not stored.flags.writeable and not np.shares_memory(stored, second["logits"])
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries) == ({"m": 2}, {"m": 1}, 1)


def test_the_byte_bound_holds_under_many_inserts() -> None:
    capacity = 256 * 2**10
    cache = ResponseCache(capacity)
    rng = np.random.default_rng(0)
    for i in range(5000):
        size = int(rng.integers(1, 2000))  # up to 8 KB: under the per-entry limit of 32 KB
        assert cache.put("m", "1", i.to_bytes(8, "little"), logits(i, size), cache.generation)
        assert cache.bytes <= capacity
    stats = cache.stats()
    assert stats.bytes == sum(e.size for e in cache._entries.values())
    assert stats.evictions == 5000 - stats.entries
    assert stats.bytes > capacity * 0.9  # full, not emptied by over-eager eviction
    # The survivors are the most recent inserts (LRU order).
    assert list(cache._entries)[-1] == (4999).to_bytes(8, "little")
    assert (4999 - stats.entries + 1).to_bytes(8, "little") == next(iter(cache._entries))


@pytest.mark.parametrize("values", [10, 2000])
def test_counted_bytes_are_what_the_process_holds(values: int) -> None:
    """Keys, arrays, dicts and bookkeeping: never under the memory really allocated, nor far over."""
    cache = ResponseCache(2**30)
    answers = [logits(i, values) for i in range(3000)]  # made before tracing: the model's outputs
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i, outputs in enumerate(answers):
            cache.put("m", "1", i.to_bytes(32, "little"), outputs, cache.generation)
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held <= cache.bytes <= 1.5 * held, (held, cache.bytes)


def test_an_answer_bigger_than_its_share_of_the_budget_is_not_stored() -> None:
    capacity = 2**20
    cache = ResponseCache(capacity)
    for i in range(4):
        assert cache.put("m", "1", bytes([i]), logits(i, 1000), cache.generation)
    big = {"logits": np.zeros((1, int(capacity * MAX_ENTRY_FRACTION) // 4 + 1), np.float32)}
    assert not cache.put("m", "1", b"big", big, cache.generation)
    assert cache.get("m", b"big") is None
    stats = cache.stats()
    assert (stats.entries, stats.skipped, stats.evictions) == (4, 1, 0)  # nothing flushed for it


def test_a_hit_keeps_an_answer_and_resize_evicts_the_least_recent() -> None:
    cache = ResponseCache(2**20)
    for i in range(3):
        cache.put("m", "1", bytes([i]), logits(i), cache.generation)
    entry = cache._entries[b"\x00"].size
    assert cache.get("m", b"\x00") is not None  # 0 is now the most recent
    cache.resize(2 * entry + 10)
    assert set(cache._entries) == {b"\x00", b"\x02"}
    cache.resize(0)
    assert not cache.enabled and len(cache) == 0 and cache.bytes == 0
    assert not cache.put("m", "1", b"x", logits(9), cache.generation)


def test_an_answer_computed_across_a_drop_is_not_stored() -> None:
    cache = ResponseCache(2**20)
    generation = cache.generation
    cache.drop("other")  # e.g. a reconfigure while the model ran
    assert not cache.put("m", "1", b"k", logits(0), generation)
    assert cache.put("m", "1", b"k", logits(0), cache.generation)


def test_a_cache_for_a_non_deterministic_model_is_a_configuration_error(demo_catalog: Path) -> None:
    with pytest.raises(pydantic.ValidationError) as err:
        make_config(demo_catalog, models={"mlp-001": {"response_cache": True, "deterministic": False}})
    assert "response_cache" in str(err.value) and "deterministic" in str(err.value)
    with pytest.raises(pydantic.ValidationError, match="response_cache_bytes"):
        make_config(demo_catalog, cache={"response_cache_bytes": "lots"})
    sized = make_config(demo_catalog, cache={"response_cache_bytes": "1Mi"})
    assert sized.cache.response_cache_bytes == 2**20


# ---- in the data plane ---------------------------------------------------------------------------


class Counted:
    """Wraps ``plane.inference.run`` to count the model runs."""

    def __init__(self, plane: DataPlane) -> None:
        self.calls = 0
        self._run = plane.inference.run
        plane.inference.run = self  # type: ignore[method-assign]

    async def __call__(self, *args: Any, **kwargs: Any) -> dict[str, np.ndarray]:
        self.calls += 1
        return await self._run(*args, **kwargs)


def run(config: ServerConfig, scenario: Callable[[DataPlane, Counted], Awaitable[T]]) -> T:
    async def main() -> T:
        plane = DataPlane(config)
        try:
            await plane.start()
            return await scenario(plane, Counted(plane))
        finally:
            plane.close()

    return asyncio.run(main())


async def answer(plane: DataPlane, model: str, rows: np.ndarray, ref: str | None = None) -> np.ndarray:
    served = await plane.acquire(model, ref)
    try:
        return (await plane.infer(served, {"input": rows}))["logits"]
    finally:
        served.release()


def test_repeated_inputs_are_answered_without_running_the_model(demo_catalog: Path) -> None:
    config = make_config(demo_catalog, models={"mlp-001": CACHED})

    async def scenario(plane: DataPlane, runs: Counted) -> None:
        first = await answer(plane, "mlp-001", ROWS[:1])
        again = await answer(plane, "mlp-001", ROWS[:1])
        np.testing.assert_array_equal(first, again)
        assert runs.calls == 1
        again[:] = 0  # the caller's copy
        np.testing.assert_array_equal(await answer(plane, "mlp-001", ROWS[:1]), first)
        await answer(plane, "mlp-001", ROWS[1:2])  # other bytes
        await answer(plane, "mlp-001", ROWS[:2])  # the same first row, in a batch of two
        assert runs.calls == 3
        stats = plane.responses.stats()
        assert (stats.hits, stats.misses, stats.entries) == ({"mlp-001": 2}, {"mlp-001": 3}, 3)

    run(config, scenario)


def test_models_that_did_not_opt_in_are_never_cached(demo_catalog: Path) -> None:
    config = make_config(demo_catalog, models={"mlp-002": {"deterministic": False}})

    async def scenario(plane: DataPlane, runs: Counted) -> None:
        for model in ("mlp-001", "mlp-002", "mlp-002"):
            await answer(plane, model, ROWS[:1])
        assert runs.calls == 3
        stats = plane.responses.stats()
        assert (stats.hits, stats.misses, stats.entries) == ({}, {}, 0)

    run(config, scenario)


def test_a_new_version_never_gets_an_old_answer(demo_catalog: Path) -> None:
    options = {**CACHED, "aliases": {"stable": "1"}}
    config = make_config(demo_catalog, models={"mlp-000": options})

    async def scenario(plane: DataPlane, runs: Counted) -> None:
        v1 = await answer(plane, "mlp-000", ROWS[:1], "stable")
        np.testing.assert_array_equal(await answer(plane, "mlp-000", ROWS[:1], "1"), v1)  # same version
        assert runs.calls == 1
        v2 = await answer(plane, "mlp-000", ROWS[:1], "2")
        assert runs.calls == 2 and not np.allclose(v1, v2)
        moved = {**CACHED, "aliases": {"stable": "2"}}
        await plane.reconfigure(make_config(demo_catalog, models={"mlp-000": moved}))
        np.testing.assert_array_equal(await answer(plane, "mlp-000", ROWS[:1], "stable"), v2)
        assert runs.calls == 2  # v2's answer was cached under v2
        # Version 1's answers stay (its key can never match v2) until the LRU order evicts them.
        np.testing.assert_array_equal(await answer(plane, "mlp-000", ROWS[:1], "1"), v1)
        assert runs.calls == 2

    run(config, scenario)


def test_live_config_turns_the_cache_off_and_on_and_resizes_it(demo_catalog: Path) -> None:
    both = {"mlp-001": CACHED, "mlp-002": CACHED}
    config = make_config(demo_catalog, models=both)

    async def scenario(plane: DataPlane, runs: Counted) -> None:
        for model in ("mlp-001", "mlp-002"):
            for i in range(3):
                await answer(plane, model, ROWS[i : i + 1])
        assert len(plane.responses) == 6

        # Off for mlp-001: its answers go, mlp-002's stay; mlp-001 runs its model again.
        await plane.reconfigure(make_config(demo_catalog, models={"mlp-002": CACHED}))
        assert {e.model for e in plane.responses._entries.values()} == {"mlp-002"}
        calls = runs.calls
        await answer(plane, "mlp-001", ROWS[:1])
        await answer(plane, "mlp-001", ROWS[:1])
        assert runs.calls == calls + 2 and len(plane.responses) == 3

        # On again: cached from the next request.
        await plane.reconfigure(make_config(demo_catalog, models=both))
        await answer(plane, "mlp-001", ROWS[:1])
        await answer(plane, "mlp-001", ROWS[:1])
        assert runs.calls == calls + 3 and len(plane.responses) == 4

        # A smaller budget keeps the most recent answers that fit.
        entry = plane.responses.bytes // 4
        smaller = make_config(demo_catalog, models=both, cache={"response_cache_bytes": 2 * entry})
        await plane.reconfigure(smaller)
        assert len(plane.responses) == 2 and plane.responses.bytes <= 2 * entry

        # 0 disables: nothing hashed, stored or counted.
        await plane.reconfigure(make_config(demo_catalog, models=both, cache={"response_cache_bytes": 0}))
        before = plane.responses.stats()
        await answer(plane, "mlp-001", ROWS[:1])
        after = plane.responses.stats()
        assert len(plane.responses) == 0 and (after.hits, after.misses) == (before.hits, before.misses)

    run(config, scenario)


def test_a_store_switch_or_an_unload_drops_the_answers(demo_catalog: Path, tmp_path: Path) -> None:
    config = make_config(demo_catalog, models={"mlp-001": CACHED, "mlp-002": CACHED})
    other = tmp_path / "other"

    async def scenario(plane: DataPlane, runs: Counted) -> None:
        await answer(plane, "mlp-001", ROWS[:1])
        await answer(plane, "mlp-002", ROWS[:1])
        plane.unload("mlp-001")
        assert {e.model for e in plane.responses._entries.values()} == {"mlp-002"}
        # Same names in another store may be other bytes: everything goes.
        shutil.copytree(demo_catalog, other)
        moved = config.model_copy(update={"store": config.store.model_copy(update={"uri": str(other)})})
        await plane.reconfigure(moved)
        assert len(plane.responses) == 0

    run(config, scenario)


# ---- over HTTP -----------------------------------------------------------------------------------


class InPlacePostprocessor(Processor):
    """Scales the logits in place, the kind of postprocess that must not reach the cache."""

    def preprocess(self, input_data: Any) -> dict[str, np.ndarray]:
        return {"input": np.asarray(input_data, dtype=np.float32)}

    def postprocess(self, outputs: dict[str, np.ndarray]) -> Any:
        outputs["logits"] *= 2
        return outputs["logits"].tolist()


def test_repeated_predicts_are_served_from_the_cache_until_the_version_moves(demo_catalog: Path) -> None:
    options = {**CACHED, "aliases": {"stable": "1"}}
    in_place = {**CACHED, "processor": f"{__name__}:InPlacePostprocessor"}
    config = make_config(demo_catalog, models={"mlp-000": options, "mlp-003": in_place})
    row = ROWS[:1].tolist()

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> None:
        async def predict(model: str) -> dict[str, Any]:
            body = {"model": model, "version": "stable", "input_data": row}
            if model == "mlp-003":
                body.pop("version")
            response = await client.post("/predict", json=body)
            assert response.status_code == 200, response.text
            return response.json()

        async def counts(model: str) -> tuple[float, float]:
            page = (await client.get("/metrics")).text
            labels = {"replica": "local", "model": model}
            return (
                metric(page, "manymodels_response_cache_hits_total", **labels),
                metric(page, "manymodels_response_cache_misses_total", **labels),
            )

        first = await predict("mlp-000")
        assert first["version"] == "1" and await counts("mlp-000") == (0, 1)
        assert await predict("mlp-000") == first
        assert await predict("mlp-000") == first
        assert await counts("mlp-000") == (2, 1)
        page = (await client.get("/metrics")).text
        assert metric(page, "manymodels_response_cache_entries", replica="local") == 1
        assert metric(page, "manymodels_response_cache_bytes", replica="local") > 0

        # The alias moves: the same request now gets version 2's answer, computed by version 2.
        moved = {**CACHED, "aliases": {"stable": "2"}}
        await plane.reconfigure(make_config(demo_catalog, models={"mlp-000": moved, "mlp-003": in_place}))
        second = await predict("mlp-000")
        assert second["version"] == "2" and second["outputs"] != first["outputs"]
        assert await counts("mlp-000") == (2, 2)

        # A postprocess that scales its outputs in place gets the same answer every time.
        scaled = await predict("mlp-003")
        assert await predict("mlp-003") == scaled == await predict("mlp-003")
        assert await counts("mlp-003") == (2, 1)

    serve(config, scenario)
