"""manymodels.dataplane.batching: per-model dynamic batching over a real DataPlane.

Every scenario is made deterministic with a gate around the resident model's ``infer``: the first
call is held (so the model is busy and the next requests queue behind it), every call's row count
is recorded, and the test releases the gate when the queue holds what it wants. No assertion depends
on timing; waits only poll for a state to be reached.
"""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from planes import run
from pydantic import ValidationError

from manymodels.config import BatchingOptions, ServerConfig
from manymodels.dataplane import DataPlane
from manymodels.dataplane.batching import LONELY_PROBE, MAX_BATCHES_IN_FLIGHT
from manymodels.dataplane.loader import cache_key
from manymodels.dataplane.served import ServedModel
from manymodels.errors import ConfigurationError, InferenceError, OutOfMemory
from manymodels.http import build_http_app
from manymodels.store import publish_version
from manymodels.store.manifest import TensorSpec

T = TypeVar("T")
MODEL = "mlp-001"  # demo catalog: input [-1, 64] -> logits [-1, 10]
POISON = 666.0  # a first column equal to this makes the gated model fail
HAS_TORCH = importlib.util.find_spec("torch") is not None


def make_config(root: Path, models: dict[str, Any], **overrides: Any) -> ServerConfig:
    # inline_infer_max_ms=0: every call runs in the pool, so a held call does not block the loop.
    raw: dict[str, Any] = {
        "store": {"uri": str(root), "refresh_interval_s": 0},
        "inline_infer_max_ms": 0,
        "models": models,
    }
    raw.update(overrides)
    return ServerConfig.model_validate(raw)


def batching(model: str = MODEL, **options: Any) -> dict[str, Any]:
    # A long delay: unless a test wants it, no batch starts because a timer ran out.
    return {model: {"batching": {"max_batch_size": 8, "max_queue_delay_ms": 60_000, **options}}}


async def wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


class Gate:
    """Wraps a resident version's ``infer``: holds the first ``hold`` calls until ``release()``,
    records each call's row count, fails calls whose inputs hold a poisoned row."""

    def __init__(self, served: ServedModel, hold: int = 1, fail_with: type[Exception] = RuntimeError):
        self.served = served
        self.inner = served.model.infer
        self.hold = hold
        self.fail_with = fail_with
        self.calls: list[int] = []
        self.widths: list[int] = []
        self.running = 0
        self.max_running = 0
        self._open = threading.Event()
        self._lock = threading.Lock()
        served.model.infer = self._infer  # type: ignore[method-assign]

    def _infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        first = next(iter(inputs.values()))
        with self._lock:
            self.calls.append(first.shape[0])
            self.widths.append(first.shape[-1])
            held = len(self.calls) <= self.hold
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            if held:
                assert self._open.wait(60), "gate never released"
            if first.dtype == np.float32 and (first[:, 0] == POISON).any():
                raise self.fail_with("poisoned row")
            return self.inner(inputs)
        finally:
            with self._lock:
                self.running -= 1

    def release(self) -> None:
        self._open.set()

    def reference(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The same version run on ``inputs`` alone, bypassing the batcher."""
        return self.inner(inputs)


async def gate(plane: DataPlane, model: str, ref: str | None = None, **kwargs: Any) -> Gate:
    served = await plane.acquire(model, ref)
    served.release()
    return Gate(served, **kwargs)


async def infer(
    plane: DataPlane, model: str, inputs: dict[str, np.ndarray], ref: str | None = None
) -> tuple[str, dict[str, np.ndarray]]:
    """One request the way the protocol layer makes it; the version that answered and the outputs."""
    served = await plane.acquire(model, ref)
    try:
        return served.manifest.version, await plane.infer(served, inputs)
    finally:
        served.release()


def rows(n: int, seed: int, width: int = 64) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((n, width)).astype(np.float32)}


def queued(plane: DataPlane, g: Gate, rows: bool = False) -> int:
    """Requests (or their rows) waiting in the gated version's queue."""
    queue = plane.inference.batcher.queue_of(g.served)
    if queue is None:
        return 0
    return queue.queued_rows if rows else queue.queued


def assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)


async def held_then(
    plane: DataPlane, g: Gate, model: str, requests: list[dict[str, np.ndarray]]
) -> list[Any]:
    """Hold the model on a first one-row request, queue ``requests`` behind it, release, gather."""
    first = asyncio.create_task(infer(plane, model, rows(1, 999)))
    await wait_for(lambda: len(g.calls) == 1)
    tasks = [asyncio.create_task(infer(plane, model, r)) for r in requests]
    # The in-flight slot left free takes what fills a batch; the rest waits for the held call.
    total = sum(r["input"].shape[0] for r in requests)
    await wait_for(lambda: queued(plane, g, rows=True) + sum(g.calls[1:]) == total)
    g.release()
    await first
    return await asyncio.gather(*tasks, return_exceptions=True)


# ---- correctness ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model",
    [
        MODEL,
        pytest.param("torch-mlp", marks=pytest.mark.skipif(not HAS_TORCH, reason="needs torch")),
        # Two outputs (logits, probabilities): both split back row for row.
        pytest.param("torch-script", marks=pytest.mark.skipif(not HAS_TORCH, reason="needs torch")),
    ],
)
def test_batched_results_equal_unbatched_runs_row_for_row(demo_catalog: Path, model: str) -> None:
    requests = [rows(n, seed) for seed, n in enumerate([1, 2, 3, 1, 2, 3, 1])]

    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, model)
        results = await held_then(plane, g, model, requests)
        for request, (version, outputs) in zip(requests, results, strict=True):
            assert version == "1"
            assert_same(outputs, g.reference(request))
        assert max(g.calls[1:]) > 3, f"no call stacked several requests: {g.calls}"
        assert sum(g.calls[1:]) == sum(r["input"].shape[0] for r in requests)

    run(make_config(demo_catalog, batching(model)), scenario)


def test_max_batch_size_is_respected_and_at_most_two_batches_run(demo_catalog: Path) -> None:
    requests = [rows(1, seed) for seed in range(10)]

    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, MODEL)
        results = await held_then(plane, g, MODEL, requests)
        for request, (_, outputs) in zip(requests, results, strict=True):
            assert_same(outputs, g.reference(request))
        assert max(g.calls[1:]) == 4 and sum(g.calls[1:]) == 10, g.calls
        assert g.max_running <= MAX_BATCHES_IN_FLIGHT
        registry = plane.metrics.registry
        labels = {"replica": "local", "model": MODEL}
        assert registry.get_sample_value("manymodels_batch_size_count", labels) == len(g.calls)
        assert registry.get_sample_value("manymodels_batch_size_sum", labels) == sum(g.calls)
        assert registry.get_sample_value("manymodels_batch_queue_seconds_count", labels) == 11

    run(make_config(demo_catalog, batching(max_batch_size=4)), scenario)


def test_a_request_larger_than_max_batch_size_runs_alone(demo_catalog: Path) -> None:
    requests = [rows(1, 0), rows(6, 1), rows(1, 2), rows(1, 3)]

    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, MODEL)
        results = await held_then(plane, g, MODEL, requests)
        for request, (_, outputs) in zip(requests, results, strict=True):
            assert_same(outputs, g.reference(request))
        # The big one alone; the three small ones (queued around it) together.
        assert sorted(g.calls[1:]) == [3, 6], g.calls

    run(make_config(demo_catalog, batching(max_batch_size=4)), scenario)


def test_preferred_sizes_start_as_soon_as_they_form(demo_catalog: Path) -> None:
    requests = [rows(1, seed) for seed in range(5)]

    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, MODEL)
        await held_then(plane, g, MODEL, requests)
        # Two pairs while the first call was held; the odd one out once the model was idle.
        assert g.calls[1:] == [2, 2, 1], g.calls

    run(make_config(demo_catalog, batching(preferred_batch_sizes=[2])), scenario)


# ---- never mixed -------------------------------------------------------------------------------------


@pytest.fixture
def pair_root(tmp_path: Path) -> Path:
    """``pair``: a [-1, -1] + b [-1, -1] -> y [-1, -1] (numpy broadcasting), any width."""
    dyn = ["batch", "width"]
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])],
        "pair",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, dyn) for n in ("a", "b")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dyn)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    artifact = tmp_path / "pair.onnx"
    artifact.write_bytes(model.SerializeToString())
    root = tmp_path / "store"
    spec = [TensorSpec(name=n, dtype="float32", shape=[-1, -1]) for n in ("a", "b")]
    out = [TensorSpec(name="y", dtype="float32", shape=[-1, -1])]
    publish_version(root, "pair", "1", runtime="onnx", artifact=artifact, inputs=spec, outputs=out)
    return root


def test_requests_of_different_shapes_are_batched_separately(pair_root: Path) -> None:
    rng = np.random.default_rng(0)

    def pair(n: int, width: int, n_b: int | None = None) -> dict[str, np.ndarray]:
        a = rng.standard_normal((n, width)).astype(np.float32)
        return {"a": a, "b": rng.standard_normal((n_b or n, width)).astype(np.float32)}

    # Widths 3 and 5 interleaved, and one request whose inputs disagree on their rows (2 vs 1,
    # broadcast by the model): it cannot be split back, so it runs alone.
    requests = [pair(1, 3), pair(2, 5), pair(2, 3), pair(1, 5), pair(2, 3, n_b=1), pair(3, 3)]

    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, "pair")
        first = asyncio.create_task(infer(plane, "pair", pair(1, 3)))
        await wait_for(lambda: len(g.calls) == 1)
        tasks = [asyncio.create_task(infer(plane, "pair", r)) for r in requests]
        await wait_for(lambda: queued(plane, g) == len(requests))
        g.release()
        await first
        for request, (_, outputs) in zip(requests, await asyncio.gather(*tasks), strict=True):
            np.testing.assert_allclose(outputs["y"], request["a"] + request["b"], rtol=1e-6)
        calls = sorted(zip(g.widths[1:], g.calls[1:], strict=True))
        assert calls == [(3, 2), (3, 6), (5, 3)], calls

    run(make_config(pair_root, batching("pair")), scenario)


def test_versions_are_never_mixed_and_one_busy_version_does_not_hold_another(demo_catalog: Path) -> None:
    model = "mlp-000"  # versions 1 and 2

    async def scenario(plane: DataPlane) -> None:
        v1, v2 = await gate(plane, model, "1"), await gate(plane, model, "2", hold=0)
        first = asyncio.create_task(infer(plane, model, rows(1, 99), "1"))
        await wait_for(lambda: len(v1.calls) == 1)
        requests = [rows(1, seed) for seed in range(6)]
        refs = ["1", "2"] * 3
        tasks = [
            asyncio.create_task(infer(plane, model, r, ref)) for r, ref in zip(requests, refs, strict=True)
        ]
        # Version 2 answers all of its requests while version 1 is still held.
        await asyncio.wait_for(asyncio.gather(*tasks[1::2]), 30)
        await wait_for(lambda: queued(plane, v1) == 3)
        assert not first.done()
        v1.release()
        await first
        for request, ref, task in zip(requests, refs, tasks, strict=True):
            version, outputs = await task
            assert version == ref
            assert_same(outputs, (v1 if ref == "1" else v2).reference(request))
        assert v1.calls == [1, 3] and sum(v2.calls) == 3

    run(make_config(demo_catalog, batching(model)), scenario)


def test_a_version_switch_mid_batch(demo_catalog: Path) -> None:
    """Requests queued on version 1 are answered by version 1, after it was retired; the alias's new
    version gets its own queue and answers at once."""
    model = "mlp-000"
    options = batching(model)[model]

    async def scenario(plane: DataPlane) -> None:
        v1 = await gate(plane, model, "stable")
        first = asyncio.create_task(infer(plane, model, rows(1, 99), "stable"))
        await wait_for(lambda: len(v1.calls) == 1)
        requests = [rows(1, seed) for seed in range(3)]
        tasks = [asyncio.create_task(infer(plane, model, r, "stable")) for r in requests]
        await wait_for(lambda: queued(plane, v1) == 3)

        moved = {model: {**options, "aliases": {"stable": "2"}}}
        await plane.reconfigure(make_config(demo_catalog, moved))
        plane.cache.discard(cache_key(model, "1"))  # evicted: retired, closed once unused
        assert v1.served.retired and not v1.served.closed

        version, outputs = await asyncio.wait_for(infer(plane, model, rows(2, 7), "stable"), 30)
        assert version == "2" and not first.done()
        v2 = await plane.acquire(model, "stable")
        v2.release()
        assert_same(outputs, v2.model.infer(rows(2, 7)))

        want = [v1.reference(r) for r in requests]  # before version 1 closes
        v1.release()
        await first
        for expected, task in zip(want, tasks, strict=True):
            version, outputs = await task
            assert version == "1"
            assert_same(outputs, expected)
        assert v1.calls == [1, 3]
        assert v1.served.closed  # the retired version closed after its last queued request

    aliases = {model: {**options, "aliases": {"stable": "1"}}}
    run(make_config(demo_catalog, aliases), scenario)


# ---- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("raised", "error"), [(RuntimeError, InferenceError), (MemoryError, OutOfMemory)])
def test_one_failing_request_fails_only_itself(
    demo_catalog: Path, raised: type[Exception], error: type[Exception]
) -> None:
    requests = [rows(1, seed) for seed in range(4)]
    requests[2]["input"][0, 0] = POISON

    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, MODEL, fail_with=raised)
        results = await held_then(plane, g, MODEL, requests)
        failed = results[2]
        assert isinstance(failed, error) and f"model {MODEL} version 1" in str(failed)
        for i, request in enumerate(requests):
            if i != 2:
                assert_same(results[i][1], g.reference(request))
        # One batch of four failed, then each request ran alone.
        assert g.calls[1:] == [4, 1, 1, 1, 1], g.calls

    run(make_config(demo_catalog, batching()), scenario)


def test_a_model_whose_outputs_are_not_row_for_row_is_answered_alone(tmp_path: Path) -> None:
    """A manifest that claims a batch dimension on an output the model reduces over: batches cannot
    be split back, so each request is re-run alone (right answers) and batching stops for it."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
        "sum",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.array([0], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    (tmp_path / "sum.onnx").write_bytes(model.SerializeToString())
    root = tmp_path / "store"
    publish_version(
        root,
        "sum",
        "1",
        runtime="onnx",
        artifact=tmp_path / "sum.onnx",
        inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, 4])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=[-1, 4])],
    )
    requests = [{"x": np.full((n, 4), n, np.float32)} for n in (1, 2, 3)]

    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, "sum")
        first = asyncio.create_task(infer(plane, "sum", {"x": np.ones((1, 4), np.float32)}))
        await wait_for(lambda: len(g.calls) == 1)
        tasks = [asyncio.create_task(infer(plane, "sum", r)) for r in requests]
        await wait_for(lambda: queued(plane, g) == 3)
        g.release()
        await first
        for request, task in zip(requests, tasks, strict=True):
            n = request["x"].shape[0]
            assert_same((await task)[1], {"y": np.full((1, 4), n * n, np.float32)})
        assert g.calls[1:] == [6, 1, 2, 3]
        await infer(plane, "sum", requests[1])  # no longer queued
        assert g.calls[-1] == 2 and plane.inference.batcher.queue_of(g.served).queued == 0  # type: ignore[union-attr]

    run(make_config(root, batching("sum")), scenario)


def test_a_cancelled_request_is_not_run(demo_catalog: Path) -> None:
    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, MODEL)
        first = asyncio.create_task(infer(plane, MODEL, rows(1, 99)))
        await wait_for(lambda: len(g.calls) == 1)
        gone = asyncio.create_task(infer(plane, MODEL, rows(3, 1)))
        kept = asyncio.create_task(infer(plane, MODEL, rows(1, 2)))
        await wait_for(lambda: queued(plane, g) == 2)
        gone.cancel()
        g.release()
        await first
        assert_same((await kept)[1], g.reference(rows(1, 2)))
        assert g.calls == [1, 1]

    run(make_config(demo_catalog, batching()), scenario)


# ---- when batches start ----------------------------------------------------------------------------


def test_a_request_to_an_idle_model_does_not_wait_for_the_delay(demo_catalog: Path) -> None:
    async def scenario(plane: DataPlane) -> None:
        # The delay is a minute: only the model being idle can start this request.
        _, outputs = await asyncio.wait_for(infer(plane, MODEL, rows(2, 0)), 30)
        assert outputs["logits"].shape == (2, 10)

    run(make_config(demo_catalog, batching()), scenario)


def test_an_idle_inline_model_batches_what_arrives_in_the_same_loop_turn(demo_catalog: Path) -> None:
    """A model that runs on the event loop: the first request runs the batch itself, with the
    requests that arrived in the same turn; a failing one is still re-run alone."""
    requests = [rows(n, seed) for seed, n in enumerate([1, 2, 1, 3])]
    requests[2]["input"][0, 0] = POISON

    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, MODEL, hold=0)
        served = await plane.acquire(MODEL, None)
        try:
            results = await asyncio.gather(
                *[plane.infer(served, r) for r in requests], return_exceptions=True
            )
            alone = await plane.infer(served, requests[0])
        finally:
            served.release()
        assert isinstance(results[2], InferenceError)
        for i in (0, 1, 3):
            assert_same(results[i], g.reference(requests[i]))
        assert_same(alone, g.reference(requests[0]))
        assert g.calls == [7, 1, 2, 1, 3, 1], g.calls  # the batch, its re-runs, then one alone

    # Everything inline (the default threshold would depend on this machine's speed).
    run(make_config(demo_catalog, batching(), inline_infer_max_ms=1000), scenario)


def test_an_inline_model_alone_for_a_while_still_finds_company(demo_catalog: Path) -> None:
    """After LONELY_PROBE requests that ran alone, an inline model stops waiting for the end of the
    loop turn, but looks again every LONELY_PROBE requests: concurrency is batched again."""

    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, MODEL, hold=0)
        served = await plane.acquire(MODEL, None)
        try:
            for seed in range(LONELY_PROBE):
                await plane.infer(served, rows(1, seed))
            assert g.calls == [1] * LONELY_PROBE
            # Three at once: the first no longer waits for the others (each runs alone)...
            await asyncio.gather(*[plane.infer(served, rows(1, seed)) for seed in range(3)])
            assert g.calls == [1] * (LONELY_PROBE + 3)
            for _ in range(LONELY_PROBE):  # ... until a probe finds them
                await asyncio.gather(*[plane.infer(served, rows(1, seed)) for seed in range(3)])
                if max(g.calls) > 1:
                    break
            assert max(g.calls) > 1, g.calls
            done = len(g.calls)
            await asyncio.gather(*[plane.infer(served, rows(1, seed)) for seed in range(3)])
            assert g.calls[done:] == [3]
        finally:
            served.release()

    run(make_config(demo_catalog, batching(), inline_infer_max_ms=1000), scenario)


def test_a_busy_model_starts_a_partial_batch_once_the_delay_has_passed(demo_catalog: Path) -> None:
    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, MODEL)
        first = asyncio.create_task(infer(plane, MODEL, rows(1, 99)))
        await wait_for(lambda: len(g.calls) == 1)
        # Neither full nor preferred, the model is busy: only the delay starts it, in the free slot.
        _, outputs = await asyncio.wait_for(infer(plane, MODEL, rows(2, 1)), 30)
        assert not first.done() and g.calls == [1, 2]
        assert_same(outputs, g.reference(rows(2, 1)))
        g.release()
        await first

    run(make_config(demo_catalog, batching(max_queue_delay_ms=5)), scenario)


# ---- the processor path -------------------------------------------------------------------------


def test_requests_through_a_processor_are_batched_after_preprocessing(demo_catalog: Path) -> None:
    texts = ["great stuff", "awful, never again", "it was fine", "love it, love it", "meh"]
    options = {
        "processor": "manymodels.processors.text:TextClassifierProcessor",
        "processor_options": {"labels": ["negative", "positive"]},
        **batching("text-sentiment")["text-sentiment"],
    }

    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, "text-sentiment")
        transport = httpx.ASGITransport(app=build_http_app(plane))
        async with httpx.AsyncClient(transport=transport, base_url="http://mm") as client:

            async def predict(text: str | list[str]) -> Any:
                reply = await client.post("/predict", json={"model": "text-sentiment", "input_data": text})
                assert reply.status_code == 200, reply.text
                return reply.json()

            first = asyncio.create_task(predict("hold"))
            await wait_for(lambda: len(g.calls) == 1)
            tasks = [asyncio.create_task(predict(t)) for t in texts[:-1]] + [
                asyncio.create_task(predict(texts[-2:]))  # two texts: two rows
            ]
            await wait_for(lambda: queued(plane, g) == len(tasks))
            g.release()
            await first
            batched = [await t for t in tasks]
            assert g.calls[1:] == [len(texts) + 1]
            alone = [await predict(t) for t in texts[:-1]] + [await predict(texts[-2:])]
        assert len(g.calls) == 1 + 1 + len(alone)  # the reference answers ran one by one
        for got, want in zip(batched, alone, strict=True):
            assert [r["label"] for r in got["outputs"]] == [r["label"] for r in want["outputs"]]
            scores = [[list(r["scores"].values()) for r in reply["outputs"]] for reply in (got, want)]
            np.testing.assert_allclose(*scores, atol=2e-6)

    run(make_config(demo_catalog, {"text-sentiment": options}), scenario)


# ---- configuration -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"max_batch_size": 1}, "max_batch_size"),
        ({}, "max_batch_size"),
        ({"max_batch_size": 8, "max_queue_delay_ms": -1}, "max_queue_delay_ms"),
        ({"max_batch_size": 8, "max_queue_delay_ms": float("inf")}, "max_queue_delay_ms"),
        ({"max_batch_size": 8, "preferred_batch_sizes": [4, 9]}, "preferred_batch_sizes"),
        ({"max_batch_size": 8, "preferred_batch_sizes": [0]}, "preferred_batch_sizes"),
        ({"max_batch_size": 8, "max_delay": 1}, "max_delay"),
    ],
)
def test_invalid_batching_options_name_the_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        ServerConfig.model_validate({"store": {"uri": "/x"}, "models": {"m": {"batching": options}}})


def test_batching_options_in_user_config() -> None:
    config = ServerConfig.model_validate(
        {
            "store": {"uri": "/x"},
            "models": {"m": {"batching": {"max_batch_size": 32, "max_queue_delay_ms": 1.5}}},
        }
    )
    assert config.models["m"].batching == BatchingOptions(max_batch_size=32, max_queue_delay_ms=1.5)
    assert (
        ServerConfig.model_validate({"store": {"uri": "/x"}, "models": {"m": {}}}).models["m"].batching
        is None
    )


def publish_fixed_batch(root: Path, demo_catalog: Path) -> None:
    """Model ``fixed`` v1: the demo MLP declared with a fixed batch of 1, so it cannot batch."""
    publish_version(
        root,
        "fixed",
        "1",
        runtime="onnx",
        artifact=demo_catalog / MODEL / "1" / "model.onnx",
        inputs=[TensorSpec(name="input", dtype="float32", shape=[1, 64])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[1, 10])],
    )


def test_batching_a_model_without_a_batch_dimension_fails_loudly(demo_catalog: Path, tmp_path: Path) -> None:
    root = tmp_path / "store"
    publish_fixed_batch(root, demo_catalog)

    async def scenario(plane: DataPlane) -> None:
        with pytest.raises(ConfigurationError, match=r"model fixed version 1: batching needs .*'input'"):
            await plane.acquire("fixed", None)
        assert cache_key("fixed", "1") not in plane.cache

    run(make_config(root, batching("fixed")), scenario)


def test_a_new_user_config_turns_batching_on_and_off_for_resident_versions(demo_catalog: Path) -> None:
    async def scenario(plane: DataPlane) -> None:
        g = await gate(plane, MODEL, hold=0)
        await plane.reconfigure(make_config(demo_catalog, batching()))
        assert g.served.options.batching is not None
        g.hold = 1  # hold the next call
        requests = [rows(1, seed) for seed in range(3)]
        for request, (_, outputs) in zip(requests, await held_then(plane, g, MODEL, requests), strict=True):
            assert_same(outputs, g.reference(request))
        assert g.calls[-1] == 3  # batched

        await plane.reconfigure(make_config(demo_catalog, {}))
        await asyncio.gather(*[infer(plane, MODEL, r) for r in requests])
        assert g.calls[-3:] == [1, 1, 1]  # one call per request again

    run(make_config(demo_catalog, {}), scenario)


def test_batching_a_resident_version_without_a_batch_dimension_refuses_the_config(
    demo_catalog: Path, tmp_path: Path
) -> None:
    root = tmp_path / "store"
    shutil.copytree(demo_catalog / MODEL, root / MODEL)
    publish_fixed_batch(root, demo_catalog)

    async def scenario(plane: DataPlane) -> None:
        (await plane.acquire("fixed", None)).release()
        wanted = {**batching("fixed"), MODEL: {"aliases": {"stable": "1"}}}
        with pytest.raises(ConfigurationError, match="model fixed version 1: batching needs"):
            await plane.reconfigure(make_config(root, wanted))
        assert plane.config.models == {}  # nothing applied

    run(make_config(root, {}), scenario)
