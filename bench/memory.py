"""Memory under churn: does the cache budget hold in the replica's RSS?

One replica (the real HTTP app, DataPlane, loader and memory cache, run by ``EmbeddedServer`` in a
subprocess of its own, without Ray), driven over HTTP by the closed-loop client of
``bench/loadgen.py``:

1. small: a catalog of 10,000 ONNX MLPs (64 -> 256 -> 10, 77 KB each), ``capacity_bytes`` 64Mi,
   Zipf(1.0) traffic over the whole catalog until the replica has loaded >= 5,000 models;
2. large: a few MLPs of >= 50 MB (1024 -> 4096 -> 3072 -> 10, 67 MB), a budget that holds 2-3 of
   them, uniform traffic over all of them (every miss evicts one).

Each scenario runs twice in the same invocation, in fresh replica processes: with the old behaviour
(``runtime: {cpu_mem_arena: true, heap_trim_interval_s: 0}``) and with the defaults. Printed: the
replica's RSS growth over the traffic (its own ``manymodels_process_resident_bytes``) divided by the
configured budget, target <= 1.3x; the RSS that unloading every model frees (to compare with the
cache's count) and what is left; and the growth less the per-model metadata (store memo, metric
series) of the models served, measured in this process on the same store.

Usage: python bench/memory.py [--quick] [--only small|large] [--allocators]
"""

from __future__ import annotations

import argparse
import ctypes.util
import gc
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import post_request, run_load  # noqa: E402

from manymodels.demo.catalog import _init, mlp_onnx  # noqa: E402
from manymodels.store import TensorSpec, publish_version  # noqa: E402
from manymodels.store.base import MANIFEST  # noqa: E402

HOST = "127.0.0.1"
MiB = 2**20
TARGET = 1.3
SETTLE_S = 2.0  # > heap_trim_interval_s: the trim that follows the last close has run
SMALL = [64, 256, 10]  # 76,840 bytes of weights: the issue's 77 KB model
LARGE = [1024, 4096, 3072, 10]  # 67 MB of weights


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


# ---- catalogs -------------------------------------------------------------------------------------


def build_catalog(root: Path, prefix: str, n: int, sizes: list[int]) -> list[str]:
    """``n`` MLPs with distinct weights. The first goes through ``publish_version``; the others are
    that artifact with its first bias patched and the same manifest with a new hash, written without
    publish's per-file fsync: 10,000 publishes would otherwise take longer than the benchmark."""
    rng = np.random.default_rng(0)
    layers = _init(rng, sizes)
    layers[0] = (layers[0][0], np.full(sizes[1], 0.5, dtype=np.float32))
    template = mlp_onnx(layers, "input", "logits")
    marker = np.float32(0.5).tobytes() * sizes[1]
    at = template.index(marker)  # the first bias's raw bytes inside the serialized model
    work = root.parent / f"{prefix}-artifacts"
    work.mkdir(parents=True, exist_ok=True)
    first = work / "model.onnx"
    first.write_bytes(template)
    names = [f"{prefix}-{i:05d}" for i in range(n)]
    manifest = publish_version(
        root,
        names[0],
        "1",
        runtime="onnx",
        artifact=first,
        inputs=[TensorSpec(name="input", dtype="float32", shape=[-1, sizes[0]])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[-1, sizes[-1]])],
    )
    blob = bytearray(template)
    for i, name in enumerate(names[1:], start=1):
        blob[at : at + 4] = np.float32(i).tobytes()  # distinct weights, distinct sha256
        folder = root / name / "1"
        folder.mkdir(parents=True)
        (folder / manifest.artifact).write_bytes(blob)
        digest = hashlib.sha256(blob).hexdigest()
        entry = manifest.model_copy(update={"name": name, "sha256": digest})
        (folder / MANIFEST).write_text(entry.model_dump_json(indent=2))
    return names


# ---- the replica ----------------------------------------------------------------------------------


def replica_main(config_json: str) -> None:
    """Run one replica until stdin closes; prints its port."""
    from manymodels.config import ServerConfig
    from manymodels.metrics import Metrics
    from manymodels.serve.embedded import EmbeddedServer

    config = ServerConfig.model_validate_json(config_json)
    server = EmbeddedServer(config, Metrics("bench"), HOST, 0)
    print(f"PORT {server.start()}", flush=True)
    sys.stdin.read()
    server.stop()


# ---- the driver -----------------------------------------------------------------------------------


class Replica:
    def __init__(self, config: dict, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--replica", json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        line = self.proc.stdout.readline()
        if not line.startswith("PORT "):
            self.proc.kill()
            raise RuntimeError(f"replica did not start: {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://{HOST}:{self.port}"

    def reset_peak(self) -> None:
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS

    def peak(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return int(re.search(r"VmHWM:\s+(\d+) kB", f.read()).group(1)) * 1024

    def page(self) -> str:
        return httpx.get(self.url + "/metrics", timeout=60).text

    def metric(self, name: str, page: str | None = None) -> float:
        found = re.search(rf"^{name}\{{[^}}]*\}} (\S+)$", page or self.page(), re.M)
        return float(found.group(1)) if found else float("nan")

    def unload_all(self, names: list[str]) -> None:
        index = httpx.post(self.url + "/v2/repository/index", timeout=60).json()
        for model in {e["name"] for e in index if e["state"] == "READY"} & set(names):
            httpx.post(f"{self.url}/v2/repository/models/{model}/unload", timeout=30)

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def bodies(port: int, names: list[str], width: int, n: int, alpha: float, seed: int) -> list[bytes]:
    """``n`` requests over ``names``: Zipf(``alpha``) popularity (0 = uniform), the same ranking of
    the models (a fixed shuffle) for every ``seed``."""
    order = np.random.default_rng(0).permutation(len(names))
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, len(names) + 1) ** alpha
    picks = order[rng.choice(len(names), size=n, p=weights / weights.sum())]
    sample = rng.random(width).astype(np.float32).round(4).tolist()
    return [
        post_request(HOST, port, "/predict", orjson.dumps({"model": names[i], "input_data": sample}))
        for i in picks
    ]


@dataclass
class Scenario:
    name: str
    names: list[str]
    width: int
    capacity: int
    loads: int
    alpha: float  # Zipf exponent of the traffic (0: uniform)
    clients: int


@dataclass
class Run:
    loads: int
    requests: int
    errors: int
    seconds: float
    rss0: int  # before the traffic, nothing cached
    rss1: int  # after it, settled
    rss2: int  # then with every model unloaded: per-model metadata and the allocators' leftovers
    peak: int
    cached: int  # the cache's count of its resident bytes
    models_seen: int
    trims: int
    trim_seconds: float


def churn(root: Path, sc: Scenario, runtime: dict, env: dict[str, str] | None = None) -> Run:
    """One fresh replica, traffic until it has loaded ``sc.loads`` models; its RSS before and after."""
    config = {
        "store": {"uri": str(root), "refresh_interval_s": 0},
        "cache": {"capacity_bytes": sc.capacity},
        "runtime": runtime,
    }
    replica = Replica(config, env)
    try:
        # Counted from a replica that has served once (onnxruntime imported, its environment made)
        # and holds no model again: growth is what the traffic adds.
        first = bodies(replica.port, sc.names[:1], sc.width, 1, 0.0, 0)
        run_load(HOST, replica.port, first, clients=1, seconds=0.2, warmup=0)
        replica.unload_all(sc.names[:1])
        time.sleep(SETTLE_S)
        rss0 = int(replica.metric("manymodels_process_resident_bytes"))
        replica.reset_peak()
        started = time.perf_counter()
        loads, seed, requests, errors = 0, 0, 0, 0
        while loads < sc.loads:
            seed += 1
            batch = bodies(replica.port, sc.names, sc.width, 8000, sc.alpha, seed)
            result = run_load(HOST, replica.port, batch, clients=sc.clients, seconds=3, warmup=0)
            requests += result.requests
            errors += result.errors
            loads = int(replica.metric("manymodels_cache_loads_total"))
        seconds = time.perf_counter() - started
        peak = replica.peak()
        time.sleep(SETTLE_S)  # the traffic has stopped: what stays resident, not what is in flight
        page = replica.page()
        rss1 = int(replica.metric("manymodels_process_resident_bytes", page))
        replica.unload_all(sc.names)
        time.sleep(SETTLE_S)
        rss2 = int(replica.metric("manymodels_process_resident_bytes"))
        return Run(
            loads=loads,
            requests=requests,
            errors=errors,
            seconds=seconds,
            rss0=rss0,
            rss1=rss1,
            rss2=rss2,
            peak=peak,
            cached=int(replica.metric("manymodels_cache_resident_bytes", page)),
            models_seen=len(set(re.findall(r'^manymodels_requests_total\{[^}]*model="([^"]+)"', page, re.M))),
            trims=int(replica.metric("manymodels_process_heap_trims_total", page)),
            trim_seconds=replica.metric("manymodels_process_heap_trim_seconds_total", page),
        )
    finally:
        replica.close()


def metadata_per_model(root: Path, names: list[str]) -> float:
    """RSS per model of what a replica keeps about every model it has served, cached or not (the
    store's memo of its listing, manifest and verified hash, the alias answer, its metric series),
    measured here on the same code over the same store."""
    from manymodels.config import ServerConfig
    from manymodels.dataplane.live_catalog import LiveCatalog
    from manymodels.metrics import Metrics
    from manymodels.process_memory import resident_bytes

    live = LiveCatalog(ServerConfig.model_validate({"store": {"uri": str(root)}}))
    metrics = Metrics("meta")

    def touch(model: str) -> None:
        version = live.resolve(model, None)
        live.answered(model, None, version)
        live.store.manifest(model, version)
        live.store.fetch(model, version)
        metrics.observe(model, 200, 0.001)
        metrics.loads.labels("meta", model).observe(0.01)

    touch(names[0])
    gc.collect()
    before = resident_bytes() or 0
    for model in names[1:]:
        touch(model)
    gc.collect()
    return ((resident_bytes() or 0) - before) / (len(names) - 1)


# The behaviour before this benchmark's fixes: ONNX Runtime's per-session arenas, no heap trimming.
BEFORE = {"cpu_mem_arena": True, "heap_trim_interval_s": 0}
SETTINGS: dict[str, tuple[dict, dict[str, str]]] = {
    "before (arena on, no trim)": (BEFORE, {}),
    "default (arena off, trim 1 s)": ({}, {}),
}


def allocator_settings() -> dict[str, tuple[dict, dict[str, str]]]:
    """--allocators: the same replica with jemalloc preloaded (Debian's libjemalloc2), for comparison."""
    jemalloc = ctypes.util.find_library("jemalloc")
    if jemalloc is None:
        sys.exit("--allocators needs jemalloc (Debian: apt-get install libjemalloc2)")
    preload = {"LD_PRELOAD": jemalloc}
    return {
        "jemalloc, arena on": (BEFORE, preload),
        "jemalloc, arena off": ({"heap_trim_interval_s": 0}, preload),
    }


def report(sc: Scenario, runs: dict[str, Run]) -> list[str]:
    lines = []
    for label, r in runs.items():
        growth, peak = r.rss1 - r.rss0, r.peak - r.rss0
        per_trim = r.trim_seconds / r.trims * 1000 if r.trims else 0.0
        lines.append(
            f"{sc.name:6s} {label:30s} {r.loads:6d} {r.requests:7d} {r.errors:4d} {r.seconds:6.1f} "
            f"{r.rss0 / MiB:7.1f} {r.rss1 / MiB:7.1f} {r.cached / MiB:7.1f} {growth / MiB:7.1f} "
            f"{growth / sc.capacity:6.2f}x {peak / sc.capacity:6.2f}x {(r.rss1 - r.rss2) / MiB:7.1f} "
            f"{(r.rss2 - r.rss0) / MiB:7.1f} {r.models_seen:6d} {r.trims:5d} {per_trim:6.1f}"
        )
    return lines


def verdict(sc: Scenario, runs: dict[str, Run], meta: float) -> list[str]:
    before, after = runs["before (arena on, no trim)"], runs["default (arena off, trim 1 s)"]

    def ratio(r: Run, less: float = 0.0) -> float:
        return (r.rss1 - r.rss0 - less) / sc.capacity

    def ok(value: float) -> str:
        return "PASS" if value <= TARGET and after.loads >= sc.loads else "MISS"

    catalog = after.models_seen * meta
    lines = [
        f"{sc.name}: RSS growth / budget = {ratio(after):.2f}x after {after.loads} loads "
        f"(target <= {TARGET}x; before: {ratio(before):.2f}x): {ok(ratio(after))}",
        f"{sc.name}: less the metadata of the {after.models_seen} models served "
        f"({meta / 1024:.1f} KiB each = {catalog / MiB:.1f} MiB, not the cache's): "
        f"{ratio(after, catalog):.2f}x (before: {ratio(before, before.models_seen * meta):.2f}x): "
        f"{ok(ratio(after, catalog))}",
    ]
    return lines if meta else lines[:1]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replica", help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="a small smoke run (~1 min)")
    parser.add_argument("--only", choices=["small", "large"], help="run one scenario")
    parser.add_argument(
        "--allocators", action="store_true", help="also run with jemalloc preloaded (LD_PRELOAD)"
    )
    args = parser.parse_args()
    if args.replica:
        replica_main(args.replica)
        return
    settings = {**SETTINGS, **(allocator_settings() if args.allocators else {})}
    if args.quick:
        small_n, small_cap, small_loads = 1500, 16 * MiB, 500
        large_sizes, large_n, large_cap, large_loads = [1024, 1024, 10], 4, 9 * MiB, 12
    else:
        small_n, small_cap, small_loads = 10_000, 64 * MiB, 5000
        large_sizes, large_n, large_cap, large_loads = LARGE, 6, 200 * MiB, 40
    header = (
        f"{'case':6s} {'setting':30s} {'loads':>6s} {'reqs':>7s} {'err':>4s} {'secs':>6s} "
        f"{'rss0':>7s} {'rss1':>7s} {'cached':>7s} {'growth':>7s} {'/budget':>7s} {'peak/b':>7s} "
        f"{'freed':>7s} {'left':>7s} {'seen':>6s} {'trims':>5s} {'ms/trim':>6s}"
    )
    table, verdicts = [], []
    with tempfile.TemporaryDirectory(prefix="mm-bench-memory-") as tmp:
        for name, n, sizes, cap, loads, alpha, clients in (
            ("small", small_n, SMALL, small_cap, small_loads, 1.0, 8),
            ("large", large_n, large_sizes, large_cap, large_loads, 0.0, 4),
        ):
            if args.only and name != args.only:
                continue
            root = Path(tmp) / name / "store"
            t0 = time.perf_counter()
            names = build_catalog(root, name, n, sizes)
            weights = (root / names[0] / "1" / "model.onnx").stat().st_size
            print(
                f"{name}: {n} models of {weights / 1e6:.2f} MB built in {time.perf_counter() - t0:.1f} s; "
                f"budget {cap / MiB:.0f} MiB; traffic: {f'Zipf({alpha:.1f})' if alpha else 'uniform'}, "
                f"{clients} clients, until {loads} loads",
                flush=True,
            )
            sc = Scenario(name, names, sizes[0], cap, loads, alpha, clients)
            runs = {label: churn(root, sc, *setting) for label, setting in settings.items()}
            table += report(sc, runs)
            meta = metadata_per_model(root, names[:2000]) if n >= 1000 else 0.0
            verdicts += verdict(sc, runs, meta)
            shutil.rmtree(root.parent)
    print()
    print(
        "RSS in MiB. rss0: after one request, nothing cached; rss1: after the traffic; cached: the "
        "cache's count;\ngrowth = rss1 - rss0; peak/b = (peak RSS during the traffic - rss0) / budget; "
        "freed / left: RSS freed by\nunloading every model / left above rss0 then; seen: models "
        "served; ms/trim: mean malloc_trim time"
    )
    print(header)
    print("\n".join(table))
    print()
    print("\n".join(verdicts))


if __name__ == "__main__":
    main()
