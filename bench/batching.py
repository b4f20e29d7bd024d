"""Dynamic batching on CPU: the real server (Gateway HAProxy -> one ModelServer replica), with and
without ``batching``, against raw onnxruntime measured in the same run.

One replica holds each model twice under two names, one with ``batching`` and one without, so both
sides run in the same process on the same weights; every comparison alternates the two (off, on,
off, on) so that a change in background load hits both. Targets (issue 12):

* compute-bound MLP 1024 -> 4096 -> 4096 -> 10 (~84 MB), 32 closed-loop clients: throughput with
  batching >= 3x without, and >= 0.5x raw ``session.run`` on one thread at the mean batch size the
  server reached;
* the same model at 1 client: p50 with batching <= 1.1x without (the queue delay must not tax light
  traffic);
* a tiny MLP (64 -> 256 -> 10) at 32 clients: not slower with batching on.

Usage: python bench/batching.py [--seconds 6] [--quick] [--in-process]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from http_overhead import app_config, free_port  # noqa: E402
from loadgen import Result, post_request, run_load  # noqa: E402
from mlp_catalog import publish_mlp, write_mlp  # noqa: E402

from manymodels.runtimes import LoadedModel, RuntimeSettings, load_model  # noqa: E402
from manymodels.store import LocalStore  # noqa: E402

HOST = "127.0.0.1"
MODELS = {"big": [1024, 4096, 4096, 10], "tiny": [64, 256, 10]}
BATCHED = "-batched"  # suffix of the copy with batching on
CLIENTS = 32
# A delay longer than a batch of the big model takes: on 2 shared cores a second concurrent batch only
# splits the same compute (see the module docstring of manymodels.dataplane.batching).
BATCHING = {"max_batch_size": 32, "max_queue_delay_ms": 10.0}


def build_catalog(root: Path) -> None:
    """Each model under two names (same artifact): ``big`` / ``big-batched``, ``tiny`` / ``tiny-batched``."""
    rng = np.random.default_rng(0)
    work = root.parent / "artifacts"
    work.mkdir(exist_ok=True)
    for name, sizes in MODELS.items():
        artifact = work / f"{name}.onnx"
        write_mlp(artifact, sizes, rng)
        for published in (name, name + BATCHED):
            publish_mlp(root, published, artifact, sizes)


def bodies(port: int, model: str, width: int, n: int = 64) -> list[bytes]:
    rng = np.random.default_rng(7)
    out = []
    for _ in range(n):
        row = rng.standard_normal(width).astype(np.float32).round(4).tolist()
        out.append(post_request(HOST, port, "/predict", orjson.dumps({"model": model, "input_data": row})))
    return out


def batch_stats(url: str, model: str) -> tuple[float, float, float]:
    """(rows, model calls, queue seconds) so far for ``model``, from the Gateway's /metrics."""
    text = httpx.get(url + "/metrics", timeout=30).text

    def total(name: str) -> float:
        pattern = rf'^{name}\{{[^}}]*model="{re.escape(model)}"[^}}]*\}} (\S+)$'
        return sum(float(v) for v in re.findall(pattern, text, re.M))

    return (
        total("manymodels_batch_size_sum"),
        total("manymodels_batch_size_count"),
        total("manymodels_batch_queue_seconds_sum"),
    )


def merge(a: Result, b: Result) -> Result:
    return Result(
        requests=a.requests + b.requests,
        errors=a.errors + b.errors,
        seconds=a.seconds + b.seconds,
        latencies=a.latencies + b.latencies,
    )


def compare(port: int, model: str, clients: int, seconds: float) -> tuple[Result, Result]:
    """(off, on): two alternating rounds of half ``seconds`` each."""
    width = MODELS[model][0]
    off_bodies, on_bodies = bodies(port, model, width), bodies(port, model + BATCHED, width)
    off, on = Result(), Result()
    for _ in range(2):
        off = merge(off, run_load(HOST, port, off_bodies, clients=clients, seconds=seconds / 2, warmup=0.5))
        on = merge(on, run_load(HOST, port, on_bodies, clients=clients, seconds=seconds / 2, warmup=0.5))
    assert off.errors == 0 and on.errors == 0, (off.errors, on.errors)
    return off, on


def raw_samples_per_s(model: LoadedModel, width: int, batch: int, seconds: float) -> float:
    """``session.run`` on one thread (the replica's setting), samples per second: the median of five
    windows, so that a burst of other work on a shared machine does not decide it."""
    x = {"input": np.random.default_rng(1).standard_normal((batch, width)).astype(np.float32)}
    model.infer(x)
    rates = []
    for _ in range(5):
        runs, started = 0, time.perf_counter()
        while runs < 2 or time.perf_counter() - started < seconds / 5:
            model.infer(x)
            runs += 1
        rates.append(runs * batch / (time.perf_counter() - started))
    return float(np.median(rates))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


CASES = [("big", CLIENTS), ("big", 1), ("tiny", CLIENTS), ("tiny", 1)]
Measured = tuple[dict[tuple[str, int], tuple[Result, Result]], dict[tuple[str, int], list[float]]]
# Called right after the big model's 32-client case with the mean batch it reached: the raw ceiling
# is measured under the same background load (the server idles meanwhile).
RawCeiling = Callable[[float], None]


def served_path(root: Path, seconds: float, raw_ceiling: RawCeiling) -> Measured:
    """The real server: local Ray, the Gateway, one ModelServer replica; the client over HTTP."""
    from manymodels.serve import local

    local.start_ray(num_cpus=4)
    try:
        port = free_port()
        config = app_config(root, port, free_port(), replicas=1, capacity=1 << 30)
        server = config["applications"][0]["deployments"][0]
        server["user_config"]["models"] = {m + BATCHED: {"batching": BATCHING} for m in MODELS}
        server["user_config"]["cache"]["prefetch"] = [m + s for m in MODELS for s in ("", BATCHED)]
        local.deploy(config)
        url = local.wait_ready(config)
        results, batches = {}, {}
        for model, clients in CASES:
            before = batch_stats(url, model + BATCHED)
            results[(model, clients)] = compare(port, model, clients, seconds)
            after = batch_stats(url, model + BATCHED)
            batches[(model, clients)] = [a - b for a, b in zip(after, before, strict=True)]
            if (model, clients) == ("big", CLIENTS):
                raw_ceiling(batches[(model, clients)][0] / max(batches[(model, clients)][1], 1))
        return results, batches
    finally:
        local.shutdown()


def in_process(root: Path, seconds: float, raw_ceiling: RawCeiling) -> Measured:
    """The DataPlane in this process, clients as coroutines on its loop: no HTTP, no Ray (isolates the
    batcher; runs where Ray is not installed)."""
    import asyncio

    from manymodels.config import ServerConfig
    from manymodels.dataplane import DataPlane

    async def closed_loop(plane: DataPlane, model: str, clients: int, seconds: float) -> Result:
        width = MODELS[model.removesuffix(BATCHED)][0]
        inputs = {"input": np.random.default_rng(7).standard_normal((1, width)).astype(np.float32)}
        result, stop = Result(), time.perf_counter() + seconds

        async def client() -> None:
            while time.perf_counter() < stop:
                started = time.perf_counter()
                served = await plane.acquire(model, None)
                try:
                    await plane.infer(served, inputs)
                finally:
                    served.release()
                result.requests += 1
                result.latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*[client() for _ in range(clients)])
        result.seconds = time.perf_counter() - started
        return result

    def stats(plane: DataPlane, model: str) -> list[float]:
        labels = {"replica": plane.metrics.replica, "model": model}
        names = (
            "manymodels_batch_size_sum",
            "manymodels_batch_size_count",
            "manymodels_batch_queue_seconds_sum",
        )
        return [plane.metrics.registry.get_sample_value(n, labels) or 0.0 for n in names]

    async def main() -> Measured:
        models = {m + BATCHED: {"batching": BATCHING} for m in MODELS}
        plane = DataPlane(ServerConfig.model_validate({"store": {"uri": str(root)}, "models": models}))
        await plane.start()
        try:
            results, batches = {}, {}
            for model, clients in CASES:
                before = stats(plane, model + BATCHED)
                off, on = Result(), Result()
                for _ in range(2):  # alternating, each after a warm-up like run_load's
                    await closed_loop(plane, model, clients, 0.5)
                    off = merge(off, await closed_loop(plane, model, clients, seconds / 2))
                    await closed_loop(plane, model + BATCHED, clients, 0.5)
                    on = merge(on, await closed_loop(plane, model + BATCHED, clients, seconds / 2))
                results[(model, clients)] = (off, on)
                batches[(model, clients)] = [
                    a - b for a, b in zip(stats(plane, model + BATCHED), before, strict=True)
                ]
                if (model, clients) == ("big", CLIENTS):
                    raw_ceiling(batches[(model, clients)][0] / max(batches[(model, clients)][1], 1))
            return results, batches
        finally:
            plane.close()

    return asyncio.run(main())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="per side and case")
    parser.add_argument("--quick", action="store_true", help="1.5-second runs (smoke test)")
    parser.add_argument("--in-process", action="store_true", help="no HTTP, no Ray: the DataPlane alone")
    args = parser.parse_args()
    seconds = 1.5 if args.quick else args.seconds

    with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
        root = Path(tmp) / "models"
        build_catalog(root)
        store = LocalStore(root)
        big = load_model(store.manifest("big", "1"), store.fetch("big", "1"), RuntimeSettings())
        raw: dict[int, float] = {}

        def raw_ceiling(mean_batch: float) -> None:
            for size in sorted({1, 8, 32, max(1, round(mean_batch))}):
                raw[size] = raw_samples_per_s(big, MODELS["big"][0], size, min(seconds, 2.0))

        results, batches = (in_process if args.in_process else served_path)(root, seconds, raw_ceiling)
        big.close()
        rows, calls, _ = batches[("big", CLIENTS)]
        mean_batch = rows / max(calls, 1)

    print("## Dynamic batching\n")
    path = (
        "in-process DataPlane, no HTTP"
        if args.in_process
        else "one replica, Gateway -> replica, /predict JSON"
    )
    print(f"{path}, batching {BATCHING}\n")
    print(
        "| model | clients | batching off | batching on | throughput on/off | p50 on/off "
        "| mean batch | mean queue |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (model, clients), (off, on) in results.items():
        rows, calls, queued = batches[(model, clients)]
        print(
            f"| {model} | {clients} | {off.rps:7.0f} rps  p50 {off.pct(50):6.2f} ms "
            f"| {on.rps:7.0f} rps  p50 {on.pct(50):6.2f} ms | {on.rps / off.rps:.2f}x "
            f"| {on.pct(50) / off.pct(50):.2f}x | {rows / max(calls, 1):.1f} "
            f"| {queued / max(rows, 1) * 1000:.2f} ms |"
        )
    print("\nraw onnxruntime session.run, one thread, big MLP (samples/s): ", end="")
    print(", ".join(f"batch {b}: {v:.0f}" for b, v in raw.items()))

    big_off, big_on = results[("big", CLIENTS)]
    one_off, one_on = results[("big", 1)]
    tiny_off, tiny_on = results[("tiny", CLIENTS)]
    ceiling = raw[max(1, round(mean_batch))]
    ratios = [
        (f"big, {CLIENTS} clients: throughput with batching / without", big_on.rps / big_off.rps, 3.0, ">="),
        (
            f"big, {CLIENTS} clients: served with batching / raw session.run at its mean batch "
            f"({mean_batch:.1f})",
            big_on.rps / ceiling,
            0.5,
            ">=",
        ),
        ("big, 1 client: p50 with batching / without", one_on.pct(50) / one_off.pct(50), 1.1, "<="),
        (
            f"tiny, {CLIENTS} clients: throughput with batching / without",
            tiny_on.rps / tiny_off.rps,
            1.0,
            ">=",
        ),
    ]
    print()
    for label, value, bound, sense in ratios:
        ok = value >= bound if sense == ">=" else value <= bound
        print(f"{label}: {value:.2f}x (target {sense} {bound}x) {verdict(ok)}")


if __name__ == "__main__":
    main()
