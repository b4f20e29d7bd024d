"""manymodels.dataplane: live reconfiguration (alias rollouts, budget, pins) and store refresh.

Each test runs one DataPlane on one event loop (``asyncio.run``), against the demo catalog or a
copy of part of it when the test writes to the store.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
from planes import run

from manymodels.config import ServerConfig
from manymodels.dataplane import DataPlane
from manymodels.errors import VersionNotFound
from manymodels.store import LocalStore, publish_version

T = TypeVar("T")
ROW = np.random.default_rng(1).standard_normal(64).astype(np.float32).tolist()


def make_config(root: Path, **overrides: Any) -> ServerConfig:
    raw: dict[str, Any] = {"store": {"uri": str(root), "refresh_interval_s": 0}}
    raw.update(overrides)
    return ServerConfig.model_validate(raw)


async def settle(plane: DataPlane) -> None:
    """Wait for prefetches spawned by start()/reconfigure() (no refresh loop in these configs)."""
    await asyncio.gather(*list(plane._background))


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def version_of(plane: DataPlane, model: str, ref: str | None = None) -> str:
    """Run one request the way the protocol layer does; the version that answered."""
    served = await plane.acquire(model, ref)
    try:
        outputs = await plane.infer(served, {"input": np.asarray([ROW], np.float32)})
    finally:
        served.release()
    assert outputs["logits"].shape == (1, 10)
    return served.manifest.version


def rollout_failures(plane: DataPlane, model: str) -> float:
    value = plane.metrics.registry.get_sample_value(
        "manymodels_rollout_failures_total", {"replica": "local", "model": model}
    )
    return value or 0.0


def copy_catalog(source: Path, target: Path, models: list[str]) -> Path:
    target.mkdir(parents=True)
    for model in models:
        shutil.copytree(source / model, target / model)
    return target


def publish_copy(
    root: Path, model: str, version: str, *, source: str | None = None, corrupt: bool = False
) -> None:
    """Publish ``version`` of ``model`` from ``source``'s v1 artifact (optionally corrupting it)."""
    source = source or model
    manifest = json.loads((root / source / "1" / "manifest.json").read_text())
    publish_version(
        root,
        model,
        version,
        runtime="onnx",
        artifact=root / source / "1" / "model.onnx",
        inputs=manifest["inputs"],
        outputs=manifest["outputs"],
    )
    if corrupt:
        artifact = root / model / version / "model.onnx"
        data = bytearray(artifact.read_bytes())
        data[len(data) // 2] ^= 0xFF
        artifact.write_bytes(bytes(data))


@pytest.fixture
def corrupt_root(demo_catalog: Path, tmp_path: Path) -> Path:
    """mlp-001 v1 (good), v2 (sha256 mismatch) and mlp-002 v1."""
    root = copy_catalog(demo_catalog, tmp_path / "store", ["mlp-001", "mlp-002"])
    publish_copy(root, "mlp-001", "2", corrupt=True)
    return root


# ---- alias rollouts -----------------------------------------------------------------------------


def test_moving_an_alias_warms_the_new_version_first(demo_catalog: Path) -> None:
    before = make_config(demo_catalog, models={"mlp-000": {"aliases": {"stable": "1"}}})
    after = make_config(demo_catalog, models={"mlp-000": {"aliases": {"stable": "2"}}})

    async def scenario(plane: DataPlane) -> None:
        assert await version_of(plane, "mlp-000") == "1"
        assert "mlp-000:2" not in plane.cache
        events: list[tuple[Any, ...]] = []

        real_load = plane.loader._load

        async def watched_load(model: str, version: str, options: Any = None) -> Any:
            if (model, version) == ("mlp-000", "2"):
                # While the new version loads, traffic still goes to the old one.
                events.append(
                    (
                        "loading",
                        await version_of(plane, "mlp-000"),
                        await version_of(plane, "mlp-000", "stable"),
                    )
                )
            return await real_load(model, version, options)

        real_set_aliases = plane.live.set_aliases

        def watched_set_aliases(aliases: Any) -> None:
            events.append(("switch", "mlp-000:2" in plane.cache, dict(aliases["mlp-000"])))
            real_set_aliases(aliases)

        plane.loader._load = watched_load  # type: ignore[method-assign]
        plane.live.set_aliases = watched_set_aliases  # type: ignore[method-assign]
        await plane.reconfigure(after)

        assert events == [("loading", "1", "1"), ("switch", True, {"stable": "2"})]
        loads = plane.cache.stats().loads
        assert await version_of(plane, "mlp-000") == "2"
        assert await version_of(plane, "mlp-000", "stable") == "2"
        assert plane.cache.stats().loads == loads  # answered by the warmed entry
        assert rollout_failures(plane, "mlp-000") == 0
        assert plane.config == after  # every move applied: the applied config equals the request

    run(before, scenario)


def test_unchanged_aliases_load_nothing(demo_catalog: Path) -> None:
    config = make_config(demo_catalog, models={"mlp-000": {"aliases": {"stable": "1"}}})

    async def scenario(plane: DataPlane) -> None:
        await plane.reconfigure(
            make_config(
                demo_catalog,
                models={"mlp-000": {"aliases": {"stable": "1"}}},
                cache={"capacity_bytes": "1Gi"},
            )
        )
        assert plane.cache.stats().loads == 0
        assert plane.catalog.resolve("mlp-000") == "1"

    run(config, scenario)


def test_alias_moved_to_a_corrupt_version_stays_on_the_old_one(corrupt_root: Path) -> None:
    before = make_config(corrupt_root, models={"mlp-001": {"aliases": {"stable": "1"}}})
    after = make_config(
        corrupt_root,
        models={
            "mlp-001": {"aliases": {"stable": "2", "beta": "2"}},
            "mlp-002": {"aliases": {"canary": "1"}},
        },
    )

    async def scenario(plane: DataPlane) -> None:
        assert await version_of(plane, "mlp-001") == "1"
        await plane.reconfigure(after)

        assert plane.catalog.aliases("mlp-001") == {"stable": "1"}  # beta had no old target
        assert plane.catalog.resolve("mlp-001") == "1"
        assert plane.catalog.resolve("mlp-001", "stable") == "1"
        with pytest.raises(VersionNotFound):
            plane.catalog.resolve("mlp-001", "beta")
        assert await version_of(plane, "mlp-001") == "1"
        assert await version_of(plane, "mlp-001", "stable") == "1"
        assert "mlp-001:2" not in plane.cache
        assert rollout_failures(plane, "mlp-001") == 2  # stable and beta
        page = plane.metrics.render().decode()
        assert 'manymodels_rollout_failures_total{model="mlp-001",replica="local"} 2.0' in page

        # The good move in the same update is applied.
        assert plane.catalog.resolve("mlp-002", "canary") == "1"
        assert rollout_failures(plane, "mlp-002") == 0

    run(before, scenario)


def test_alias_from_the_store_moved_to_a_corrupt_version(corrupt_root: Path) -> None:
    from manymodels.store import set_store_aliases

    set_store_aliases(corrupt_root, "mlp-001", {"stable": "1"})
    config = make_config(corrupt_root)
    moved = make_config(corrupt_root, models={"mlp-001": {"aliases": {"stable": "2"}}})

    async def scenario(plane: DataPlane) -> None:
        await plane.reconfigure(moved)
        assert plane.catalog.resolve("mlp-001", "stable") == "1"
        assert rollout_failures(plane, "mlp-001") == 1

    run(config, scenario)


def test_refused_rollout_is_not_applied_by_a_later_unrelated_update(corrupt_root: Path) -> None:
    before = make_config(corrupt_root, models={"mlp-001": {"aliases": {"stable": "1"}}})
    refused = make_config(corrupt_root, models={"mlp-001": {"aliases": {"stable": "2"}}})
    budget_only = make_config(
        corrupt_root,
        models={"mlp-001": {"aliases": {"stable": "2"}}},
        cache={"capacity_bytes": "1Gi"},
    )

    async def scenario(plane: DataPlane) -> None:
        await plane.reconfigure(refused)
        assert plane.catalog.resolve("mlp-001", "stable") == "1"
        await plane.reconfigure(budget_only)
        assert plane.catalog.resolve("mlp-001", "stable") == "1"

    run(before, scenario)


# ---- cache budget and pins ----------------------------------------------------------------------


def test_cache_budget_resizes_live(demo_catalog: Path) -> None:
    config = make_config(demo_catalog, cache={"capacity_bytes": "64Mi"})

    async def scenario(plane: DataPlane) -> None:
        assert plane.cache.stats().capacity_bytes == 64 * 2**20
        for model in ("mlp-001", "mlp-002"):
            await version_of(plane, model)
        sizes = dict(plane.cache.resident())
        assert set(sizes) == {"mlp-001:1", "mlp-002:1"}
        total = sum(sizes.values())

        await plane.reconfigure(make_config(demo_catalog, cache={"capacity_bytes": total - 1}))
        stats = plane.cache.stats()
        assert stats.capacity_bytes == total - 1
        assert stats.entries == 1
        assert stats.resident_bytes <= total - 1
        assert stats.evictions == 1

        await plane.reconfigure(make_config(demo_catalog, cache={"capacity_bytes": 0}))
        assert len(plane.cache) == 0
        assert plane.cache.stats().resident_bytes == 0

        await plane.reconfigure(make_config(demo_catalog, cache={"capacity_bytes": "128Mi"}))
        assert plane.cache.stats().capacity_bytes == 128 * 2**20
        assert await version_of(plane, "mlp-001") == "1"
        assert "mlp-001:1" in plane.cache
        value = plane.metrics.registry.get_sample_value(
            "manymodels_cache_capacity_bytes", {"replica": "local"}
        )
        assert value == 128 * 2**20

    run(config, scenario)


def test_pins_and_prefetch_are_applied(demo_catalog: Path) -> None:
    config = make_config(
        demo_catalog,
        cache={
            "pin": ["mlp-001", "mlp-000:canary", "no-such-model", "mlp-002:9"],
            "prefetch": ["mlp-000:canary", "mlp-003", "no-such-model"],
        },
    )

    async def scenario(plane: DataPlane) -> None:
        await settle(plane)
        assert plane.cache.stats().pinned == 2  # the unknown pins are ignored
        assert "mlp-000:2" in plane.cache
        assert "mlp-003:1" in plane.cache
        assert "mlp-001:1" not in plane.cache  # a pin keeps a model, it does not load it
        await version_of(plane, "mlp-001")

        # Shrinking the budget to nothing keeps exactly the pinned models.
        shrunk = make_config(
            demo_catalog,
            cache={
                "capacity_bytes": 1,
                "pin": ["mlp-001", "mlp-000:canary"],
            },
        )
        await plane.reconfigure(shrunk)
        await settle(plane)
        assert sorted(plane.cache.keys()) == ["mlp-000:2", "mlp-001:1"]

        # Moving a pin to another version unpins the old key.
        moved = make_config(demo_catalog, cache={"pin": ["mlp-000:stable"]})
        await plane.reconfigure(moved)
        await settle(plane)
        assert plane.cache.stats().pinned == 1
        await plane.reconfigure(make_config(demo_catalog, cache={"capacity_bytes": 1}))
        assert plane.cache.stats().pinned == 0
        assert len(plane.cache) == 0

    run(config, scenario)


def test_unpinning_and_shrinking_in_one_update_ends_within_budget(demo_catalog: Path) -> None:
    config = make_config(demo_catalog, cache={"pin": ["mlp-001"]})

    async def scenario(plane: DataPlane) -> None:
        await version_of(plane, "mlp-001")
        await plane.reconfigure(make_config(demo_catalog, cache={"capacity_bytes": 1}))
        stats = plane.cache.stats()
        assert stats.resident_bytes <= stats.capacity_bytes

    run(config, scenario)


def test_a_new_store_starts_clean(demo_catalog: Path, tmp_path: Path) -> None:
    other = copy_catalog(demo_catalog, tmp_path / "other", ["mlp-001"])
    config = make_config(demo_catalog, cache={"pin": ["mlp-002"]})

    async def scenario(plane: DataPlane) -> None:
        await version_of(plane, "mlp-001")
        await version_of(plane, "mlp-002")
        await plane.reconfigure(make_config(other))
        assert len(plane.cache) == 0
        assert plane.cache.stats().pinned == 0
        assert isinstance(plane.catalog.store, LocalStore)
        assert plane.catalog.store.root == other.resolve()
        assert plane.catalog.models() == ["mlp-001"]
        assert await version_of(plane, "mlp-001") == "1"

    run(config, scenario)


# ---- store refresh ------------------------------------------------------------------------------


def test_refresh_warms_a_new_latest_before_it_takes_traffic(demo_catalog: Path, tmp_path: Path) -> None:
    root = copy_catalog(demo_catalog, tmp_path / "store", ["mlp-001"])
    config = make_config(root, store={"uri": str(root), "refresh_interval_s": 0.05})

    async def scenario(plane: DataPlane) -> None:
        assert await version_of(plane, "mlp-001") == "1"
        publish_copy(root, "mlp-001", "2")
        await wait_for(lambda: plane.catalog.resolve("mlp-001") == "2")
        assert "mlp-001:2" in plane.cache  # loaded before the new catalog was swapped in
        assert await version_of(plane, "mlp-001") == "2"

        # A corrupt newer version never takes over: the last version that answered keeps serving.
        publish_copy(root, "mlp-001", "3", corrupt=True)
        await asyncio.sleep(0.3)
        assert await version_of(plane, "mlp-001") == "2"
        assert "mlp-001:3" not in plane.cache

    run(config, scenario)


def test_one_corrupt_version_does_not_block_other_store_changes(corrupt_root: Path) -> None:
    """A refresh round whose warm-up of one model fails still picks up the rest of the store."""
    (corrupt_root / "mlp-001" / "2").rename(corrupt_root / "mlp-001" / ".staged-2")
    config = make_config(corrupt_root, store={"uri": str(corrupt_root), "refresh_interval_s": 0.05})

    async def scenario(plane: DataPlane) -> None:
        assert await version_of(plane, "mlp-001") == "1"
        (corrupt_root / "mlp-001" / ".staged-2").rename(corrupt_root / "mlp-001" / "2")
        publish_copy(corrupt_root, "mlp-003", "1", source="mlp-002")
        await wait_for(lambda: "mlp-003" in plane.catalog.models(), timeout=5.0)
        assert await version_of(plane, "mlp-003") == "1"
        assert await version_of(plane, "mlp-001") == "1"  # latest (2) is corrupt: v1 answers

    run(config, scenario)


# ---- refresh and reconfigure never overwrite each other ------------------------------------------


def test_reconfigure_during_a_slow_refresh_round_keeps_the_newer_config(
    demo_catalog: Path, tmp_path: Path
) -> None:
    root = copy_catalog(demo_catalog, tmp_path / "store", ["mlp-001"])
    store = {"uri": str(root), "refresh_interval_s": 0.05}
    config = make_config(root, store=store)
    newer = make_config(
        root, store=store, models={"mlp-001": {"aliases": {"stable": "1"}}}, cache={"capacity_bytes": "96Mi"}
    )

    async def scenario(plane: DataPlane) -> None:
        assert await version_of(plane, "mlp-001") == "1"
        release = asyncio.Event()
        real_load = plane.loader._load

        async def slow_load(model: str, version: str, options: Any = None) -> Any:
            if (model, version) == ("mlp-001", "2"):
                await release.wait()  # the refresh round's warm-up of the new latest blocks here
            return await real_load(model, version, options)

        plane.loader._load = slow_load  # type: ignore[method-assign]
        publish_copy(root, "mlp-001", "2")
        await wait_for(lambda: "mlp-001:2" in plane.cache.loading_keys())
        reconfigure = asyncio.create_task(plane.reconfigure(newer))
        await asyncio.sleep(0.2)
        assert not reconfigure.done()  # waits for the round instead of racing it
        release.set()
        await reconfigure
        await asyncio.sleep(0.2)  # further refresh rounds must not undo it either
        assert plane.config == newer
        assert plane.catalog.versions("mlp-001") == ["1", "2"]  # the round's listing is in
        assert await version_of(plane, "mlp-001") == "1"  # and so is the alias it raced with
        assert plane.cache.stats().capacity_bytes == 96 * 2**20

    run(config, scenario)


# ---- models leave memory when they leave the cache ----------------------------------------------


@pytest.fixture
def close_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every LoadedModel.close() the data plane makes, as 'model:version'."""
    from manymodels.dataplane import loader

    closed: list[str] = []
    real_load_model = loader.load_model

    def counting_load_model(manifest: Any, *args: Any, **kwargs: Any) -> Any:
        model = real_load_model(manifest, *args, **kwargs)
        real_close = model.close

        def close() -> None:
            closed.append(f"{manifest.name}:{manifest.version}")
            real_close()

        model.close = close
        return model

    monkeypatch.setattr(loader, "load_model", counting_load_model)
    return closed


def test_evicted_unloaded_and_replaced_models_are_closed(
    demo_catalog: Path, close_counter: list[str]
) -> None:
    async def scenario(plane: DataPlane) -> None:
        for model in ("mlp-000", "mlp-001", "mlp-002", "mlp-003"):
            await version_of(plane, model)
        size = max(dict(plane.cache.resident()).values()) * 3 // 2
        plane.cache.resize(size)  # room for the largest of these models and not much more
        resident = {k for k, _ in plane.cache.resident()}
        assert 1 <= len(resident) < 4
        assert sorted(close_counter) == sorted(
            {"mlp-000:1", "mlp-001:1", "mlp-002:1", "mlp-003:1"} - resident
        )

        # In use when unloaded: closed when its request is done, not under it.
        held = await plane.acquire("mlp-004", "1")
        plane.unload("mlp-004")
        assert "mlp-004:1" not in close_counter
        outputs = await plane.infer(held, {"input": np.asarray([ROW], np.float32)})
        assert outputs["logits"].shape == (1, 10)
        held.release()
        assert close_counter[-1] == "mlp-004:1"

        # A store change closes everything that was resident.
        await plane.reconfigure(
            make_config(demo_catalog / "mlp-000", cache={"capacity_bytes": size * 3 // 2})
        )
        assert len(plane.cache) == 0
        assert sorted(close_counter) == sorted(
            {"mlp-000:1", "mlp-001:1", "mlp-002:1", "mlp-003:1", "mlp-004:1"}
        )

    run(make_config(demo_catalog, cache={"capacity_bytes": "1Gi"}), scenario)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_unloading_a_large_model_gives_its_memory_back(tmp_path: Path) -> None:
    """On CPU, RSS drops back by about the model's weights once it is unloaded (closed)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    weights = np.random.default_rng(0).standard_normal((4096, 8192)).astype(np.float32)  # 128 MiB
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8192])],
        [numpy_helper.from_array(weights, "w")],
    )
    artifact = tmp_path / "big.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), artifact)
    del weights, graph
    root = tmp_path / "store"
    publish_version(
        root,
        "big",
        "1",
        runtime="onnx",
        artifact=artifact,
        inputs=[{"name": "x", "dtype": "float32", "shape": [-1, 4096]}],
        outputs=[{"name": "y", "dtype": "float32", "shape": [-1, 8192]}],
    )

    async def scenario(plane: DataPlane) -> None:
        before = rss_bytes()
        (await plane.acquire("big", None)).release()
        loaded = rss_bytes()
        assert loaded - before > 100 * 2**20
        plane.unload("big")
        gc.collect()
        after = rss_bytes()
        assert loaded - after > 100 * 2**20, (before, loaded, after)

    run(make_config(root, cache={"capacity_bytes": "1Gi"}), scenario)


# ---- a remote store: opened once, refreshed in place ---------------------------------------------


def test_a_remote_store_is_opened_once_and_refreshed_in_place(
    demo_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """file:// with a disk tier goes through fsspec and the tier, like s3:// (tests/app/store runs the
    real object-store servers): new versions and aliases.json moves are seen, nothing is fetched
    twice, no tier folder is added per round."""
    from manymodels.dataplane import live_catalog
    from manymodels.store import RemoteStore, set_store_aliases

    opened: list[str] = []
    real_open = live_catalog.open_store

    def counting_open(uri: str, **kwargs: Any) -> Any:
        opened.append(uri)
        return real_open(uri, **kwargs)

    monkeypatch.setattr(live_catalog, "open_store", counting_open)
    root = copy_catalog(demo_catalog, tmp_path / "store", ["mlp-001"])
    tier = tmp_path / "tier"
    store = {"uri": f"file://{root}", "disk_cache_dir": str(tier), "refresh_interval_s": 0.05}
    config = make_config(root, store=store)

    async def scenario(plane: DataPlane) -> None:
        assert isinstance(plane.live.store, RemoteStore)
        assert await version_of(plane, "mlp-001") == "1"
        rounds = plane.live.refreshes
        publish_copy(root, "mlp-001", "2")
        await wait_for(lambda: plane.catalog.resolve("mlp-001") == "2")
        assert await version_of(plane, "mlp-001") == "2"
        set_store_aliases(root, "mlp-001", {"stable": "1"})
        await wait_for(lambda: plane.catalog.resolve("mlp-001") == "1")
        assert await version_of(plane, "mlp-001") == "1"
        await wait_for(lambda: plane.live.refreshes > rounds + 3)
        assert opened == [f"file://{root}"]
        disk = plane.live.store.disk.stats()  # type: ignore[attr-defined]
        # v2 is a copy of v1's bytes: content-addressed, fetched once for both, across every round
        assert disk["downloads"] == len(disk_shas(root)) == 1
        assert sorted(p.name for p in tier.iterdir()) == [".tmp", *sorted(disk_shas(root))]

    run(config, scenario)


def disk_shas(root: Path) -> set[str]:
    return {json.loads(m.read_text())["sha256"] for m in root.glob("*/*/manifest.json")}


def test_changing_only_the_refresh_interval_keeps_everything_resident(demo_catalog: Path) -> None:
    config = make_config(demo_catalog)
    faster = make_config(demo_catalog, store={"uri": str(demo_catalog), "refresh_interval_s": 0.05})

    async def scenario(plane: DataPlane) -> None:
        await version_of(plane, "mlp-001")
        store = plane.live.store
        await plane.reconfigure(faster)
        assert "mlp-001:1" in plane.cache and plane.live.store is store
        await wait_for(lambda: plane.live.refreshes > 0)  # polling turned on live

    run(config, scenario)


def test_a_model_the_cache_does_not_admit_serves_every_waiter_then_closes(
    demo_catalog: Path, close_counter: list[str]
) -> None:
    async def scenario(plane: DataPlane) -> None:
        plane.cache._policy.admit = lambda *args: False  # type: ignore[method-assign]
        versions = await asyncio.gather(*(version_of(plane, "mlp-002") for _ in range(5)))
        assert versions == ["1"] * 5
        assert plane.cache.stats().loads == 1  # one load shared by all five, none reloaded
        assert "mlp-002:1" not in plane.cache
        # Closed once its last holder dropped it; a loader thread may hold it a moment longer.
        for _ in range(500):
            gc.collect()
            if close_counter:
                break
            await asyncio.sleep(0.01)
        assert close_counter == ["mlp-002:1"]

    run(make_config(demo_catalog), scenario)


def test_listing_a_model_for_the_first_time_does_not_block_other_requests(demo_catalog: Path) -> None:
    async def scenario(plane: DataPlane) -> None:
        await version_of(plane, "mlp-001")  # listed and resident
        store = plane.live.store
        real_scan = store._scan_versions

        def slow_scan(model: str) -> list[str] | None:
            if model == "mlp-002":
                time.sleep(0.5)  # an object store's LIST on a bad day
            return real_scan(model)

        store._scan_versions = slow_scan  # type: ignore[method-assign]
        assert not store.memoised("mlp-002", None) and store.memoised("mlp-001", None)
        done: list[str] = []

        async def request(model: str) -> None:
            await version_of(plane, model)
            done.append(model)

        slow = asyncio.create_task(request("mlp-002"))
        await asyncio.sleep(0.05)  # mlp-002's listing is under way
        started = time.perf_counter()
        await request("mlp-001")
        assert time.perf_counter() - started < 0.3  # the loop kept serving
        await slow
        assert done == ["mlp-001", "mlp-002"]
        assert store.memoised("mlp-002", None)

    run(make_config(demo_catalog), scenario)
