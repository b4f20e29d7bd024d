"""A model that closes asks for its freed memory to go back to the OS (ServedModel.on_close, wired by
the loader to the heap trimmer with the runtime's interval), whichever way it leaves: evicted,
unloaded, or loaded but not admitted."""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import numpy as np
import pytest

from manymodels.config import ModelOptions, ServerConfig
from manymodels.dataplane import DataPlane, loader
from manymodels.dataplane.served import ServedModel
from manymodels.runtimes import LoadedModel
from manymodels.store.manifest import ModelManifest, TensorSpec

ROW = np.zeros((1, 64), np.float32)


class FakeModel(LoadedModel):
    def __init__(self, manifest: ModelManifest) -> None:
        super().__init__(manifest, "cpu")
        self.closes = 0

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {}

    def memory_bytes(self) -> int:
        return 1

    def close(self) -> None:
        self.closes += 1


def served_with_hook() -> tuple[ServedModel, FakeModel, list[int]]:
    manifest = ModelManifest(
        name="m",
        version="1",
        runtime="onnx",
        artifact="model.onnx",
        sha256="0" * 64,
        size_bytes=1,
        inputs=[TensorSpec(name="input", dtype="float32", shape=[-1, 64])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[-1, 10])],
    )
    model = FakeModel(manifest)
    calls: list[int] = []
    served = ServedModel(manifest, model, None, ModelOptions(), on_close=lambda: calls.append(model.closes))
    return served, model, calls


def test_on_close_runs_once_after_the_model_closed() -> None:
    served, model, calls = served_with_hook()
    assert served.acquire()
    served.retire()
    assert calls == []  # still in use
    served.release()
    assert calls == [1] and model.closes == 1  # after close(): the memory is free by then
    served.close()
    assert calls == [1]


class Recorder:
    def __init__(self) -> None:
        self.intervals: list[float | None] = []

    def request(self, interval_s: float | None = None) -> None:
        self.intervals.append(interval_s)


@pytest.fixture
def trims(monkeypatch: pytest.MonkeyPatch) -> Recorder:
    gc.collect()  # models earlier tests left to the collector must not report here
    recorder = Recorder()
    monkeypatch.setattr(loader, "HEAP_TRIMMER", recorder)
    return recorder


def run(root: Path, scenario, **runtime: float) -> None:
    config = ServerConfig.model_validate(
        {"store": {"uri": str(root), "refresh_interval_s": 0}, "runtime": runtime}
    )

    async def main() -> None:
        plane = DataPlane(config)
        try:
            await plane.start()
            await scenario(plane)
        finally:
            plane.close()

    asyncio.run(main())


async def serve(plane: DataPlane, model: str) -> None:
    served = await plane.acquire(model, None)
    try:
        await plane.infer(served, {"input": ROW})
    finally:
        served.release()


def test_evicted_and_unloaded_models_ask_for_a_trim(demo_catalog: Path, trims: Recorder) -> None:
    async def scenario(plane: DataPlane) -> None:
        await serve(plane, "mlp-001")
        await serve(plane, "mlp-002")
        assert trims.intervals == []
        plane.cache.resize(max(size for _, size in plane.cache.resident()))  # room for one
        assert trims.intervals == [0.25]
        plane.unload("mlp-001")
        plane.unload("mlp-002")
        assert trims.intervals == [0.25, 0.25]

    run(demo_catalog, scenario, heap_trim_interval_s=0.25)


def test_a_model_not_admitted_asks_for_a_trim_when_dropped(demo_catalog: Path, trims: Recorder) -> None:
    async def scenario(plane: DataPlane) -> None:
        plane.cache._policy.admit = lambda *args: False  # type: ignore[method-assign]
        await serve(plane, "mlp-003")
        assert "mlp-003:1" not in plane.cache
        # Dropped with its last reference, which a loader thread may hold a moment longer.
        for _ in range(1000):
            gc.collect()
            if 0.0 in trims.intervals:
                break
            await asyncio.sleep(0.01)
        assert trims.intervals.count(0.0) == 1  # the interval as configured: 0 = the trimmer does nothing

    run(demo_catalog, scenario, heap_trim_interval_s=0)


@pytest.mark.parametrize("interval", [0, 1.0])
def test_trimming_replicas_pin_the_mmap_threshold(
    demo_catalog: Path, monkeypatch: pytest.MonkeyPatch, interval: float
) -> None:
    pinned: list[bool] = []
    monkeypatch.setattr(loader, "pin_mmap_threshold", lambda: pinned.append(True))

    async def scenario(plane: DataPlane) -> None:
        assert pinned == ([True] if interval else [])

    run(demo_catalog, scenario, heap_trim_interval_s=interval)
