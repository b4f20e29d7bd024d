"""The response cache against the same model uncached, in the same run, on the real serving path.

One local Ray, the Gateway (HAProxy) in front of one ModelServer replica, 8 closed-loop clients
(bench/loadgen.py), three ONNX MLPs from tiny to compute-bound. Each model is measured with the
response cache off, on, and off again, switched by live reconfigures (same replica, model resident):

- repeated inputs: the clients cycle through 64 distinct rows (the cache's case), off vs on;
- unique inputs: every request a new row (all misses), to show what the cache costs when it never hits.

Hits and misses are read from the replica's ``manymodels_response_cache_*`` counters for each run.
Target (issue 12): repeated inputs at 8 clients >= 1.5x the uncached throughput. A hit saves the
model run, not the HTTP, JSON and input checks around it, so the gain is bounded by the model's share
of a request: printed per model, with the verdict on the models whose run is not negligible next to
the ~0.2 ms a request costs the server anyway.

Usage: python bench/response_cache.py [--seconds 8] [--quick]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from http_overhead import HOST, app_config, fmt, free_port  # noqa: E402
from loadgen import Result, post_request, run_load  # noqa: E402
from mlp_catalog import publish_mlp, session_run_ms, write_mlp  # noqa: E402

from manymodels.dataplane.response_cache import ResponseCache, response_key  # noqa: E402
from manymodels.serve import local  # noqa: E402

CLIENTS = 8
DISTINCT = 64  # repeated-inputs case: rows the clients cycle through
TARGET = 1.5
MODELS = {  # name -> layer widths
    "tiny": [64, 256, 10],  # bench/http_overhead.py's model: ~15 us a run
    "mid": [256, 1024, 1024, 10],
    "large": [1024, 4096, 4096, 10],  # the compute-bound batching model (~84 MB)
}
JUDGED = ("mid", "large")


def build_catalog(root: Path) -> dict[str, float]:
    """Publish the models; returns each one's raw single-row run time in ms (ORT, one thread)."""
    rng = np.random.default_rng(0)
    work = root.parent / "artifacts"
    work.mkdir(parents=True, exist_ok=True)
    raw = {}
    for name, sizes in MODELS.items():
        artifact = work / f"{name}.onnx"
        write_mlp(artifact, sizes, rng)
        publish_mlp(root, name, artifact, sizes)
        row = rng.standard_normal((1, sizes[0])).astype(np.float32)
        raw[name] = session_run_ms(artifact, row, runs=200 if sizes[1] < 4096 else 30)
    return raw


def inprocess_costs(n: int = 20000, rounds: int = 3) -> dict[str, float]:
    """CPU microseconds per request the cache adds, in process, for the tiny model's shapes (a 64-float
    row in, 10 floats out); best of ``rounds``: the HTTP runs are too noisy to see a few microseconds."""
    rows = np.random.default_rng(3).standard_normal((n, 64)).astype(np.float32)
    inputs = [{"input": rows[i : i + 1]} for i in range(n)]
    answer = {"logits": np.ones((1, 10), np.float32)}
    best = {"key": float("inf"), "miss": float("inf"), "hit": float("inf")}
    for _ in range(rounds):
        cache = ResponseCache(64 * 2**20)
        t0 = time.process_time()
        keys = [response_key("tiny", "1", x) for x in inputs]
        t1 = time.process_time()
        for key in keys:
            if cache.get("tiny", key) is None:
                cache.put("tiny", "1", key, answer, cache.generation)
        t2 = time.process_time()
        for key in keys:
            cache.get("tiny", key)
        t3 = time.process_time()
        for name, seconds in (("key", t1 - t0), ("miss", t2 - t1), ("hit", t3 - t2)):
            best[name] = min(best[name], seconds / n * 1e6)
    return best


def bodies(port: int, model: str, n: int, seed: int) -> list[bytes]:
    rows = np.random.default_rng(seed).standard_normal((n, MODELS[model][0])).round(4)
    return [
        post_request(HOST, port, "/predict", orjson.dumps({"model": model, "input_data": [row]}))
        for row in rows.tolist()
    ]


def counters(url: str, model: str) -> tuple[float, float]:
    """(hits, misses) of ``model``'s response cache, summed over replicas."""
    hits = misses = 0.0
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=30).text):
        for sample in family.samples:
            if sample.labels.get("model") != model:
                continue
            if sample.name == "manymodels_response_cache_hits_total":
                hits += sample.value
            elif sample.name == "manymodels_response_cache_misses_total":
                misses += sample.value
    return hits, misses


def measure(
    url: str, port: int, reqs: list[bytes], model: str, seconds: float, warmup: float
) -> tuple[Result, float, float]:
    """One closed-loop run, with the hits and misses it caused."""
    before = counters(url, model)
    result = run_load(HOST, port, reqs, clients=CLIENTS, seconds=seconds, warmup=warmup)
    after = counters(url, model)
    assert result.errors == 0, f"{model}: {result.errors} errors"
    return result, after[0] - before[0], after[1] - before[1]


def switch(config: dict, url: str, port: int, model: str, on: bool, timeout: float = 120) -> None:
    """Turn ``model``'s response cache on or off by a live reconfigure (same replica, model stays
    resident) and wait until the replica applies it: a repeated probe hits (on) / is not counted (off)."""
    server = config["applications"][0]["deployments"][0]["user_config"]
    server["models"] = {model: {"response_cache": on}}
    local.deploy(config)
    probe = orjson.dumps({"model": model, "input_data": [[0.5] * MODELS[model][0]]})
    deadline = time.monotonic() + timeout
    while True:
        before = counters(url, model)
        for _ in range(2):
            httpx.post(f"http://{HOST}:{port}/predict", content=probe, timeout=30).raise_for_status()
        after = counters(url, model)
        if (after[0] > before[0]) if on else (after == before):
            return
        assert time.monotonic() < deadline, f"the response cache of {model} did not turn {on}"
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true", help="2-second runs (smoke test)")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds

    runs: dict[tuple[str, str, str], tuple[Result, float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
        root = Path(tmp) / "models"
        raw = build_catalog(root)
        costs = inprocess_costs()
        local.start_ray(num_cpus=4)
        port, ray_port = free_port(), free_port()
        try:
            config = app_config(root, port, ray_port, replicas=1, capacity=2**30)
            local.deploy(config)
            url = local.wait_ready(config)
            for m in MODELS:
                repeated = bodies(port, m, DISTINCT, seed=1)
                switch(config, url, port, m, on=False)
                runs[(m, "repeated", "off1")] = measure(url, port, repeated, m, seconds, warmup=1.0)
                # Enough distinct rows that no client reaches the next one's share even at 3x the uncached
                # rate (a busy machine swings that much); no warm-up, which would replay them.
                n = int(runs[(m, "repeated", "off1")][0].rps * seconds * 3) + 2000
                unique = bodies(port, m, n, seed=2)
                runs[(m, "unique", "off1")] = measure(url, port, unique, m, seconds, warmup=0)
                switch(config, url, port, m, on=True)
                runs[(m, "repeated", "on")] = measure(url, port, repeated, m, seconds, warmup=1.0)
                runs[(m, "unique", "on")] = measure(url, port, unique, m, seconds, warmup=0)
                switch(config, url, port, m, on=False)  # drops its answers
                runs[(m, "repeated", "off2")] = measure(url, port, repeated, m, seconds, warmup=1.0)
                runs[(m, "unique", "off2")] = measure(url, port, unique, m, seconds, warmup=0)
        finally:
            local.shutdown()
    print(report(runs, raw, seconds, costs), flush=True)


def report(
    runs: dict[tuple[str, str, str], tuple[Result, float, float]],
    raw: dict[str, float],
    seconds: float,
    costs: dict[str, float],
) -> str:
    lines = [
        "## Response cache\n",
        f"One replica behind the Gateway, {CLIENTS} closed-loop clients, {seconds:.0f} s per run. "
        f"repeated = {DISTINCT} distinct rows cycled; unique = a new row per request (all misses). "
        "Per model, in this order: cache off, on (live reconfigure), off again; ratio = on / mean(off).",
        "",
        "| model | raw run (1 row) | inputs | cache off (before) | cache on | cache off (after) "
        "| hits / misses (on) | **ratio** |",
        "|---|---|---|---|---|---|---|---|",
    ]
    ratios = {}
    for m, sizes in MODELS.items():
        for case in ("repeated", "unique"):
            off1, on, off2 = (runs[(m, case, phase)] for phase in ("off1", "on", "off2"))
            ratio = ratios[(m, case)] = on[0].rps / ((off1[0].rps + off2[0].rps) / 2)
            lines.append(
                f"| {m} ({'-'.join(map(str, sizes))}) | {raw[m]:.3f} ms | {case} | {fmt(off1[0])} "
                f"| {fmt(on[0])} | {fmt(off2[0])} | {on[1]:.0f} / {on[2]:.0f} | **{ratio:.2f}x** |"
            )
    for m in MODELS:  # one paragraph each, as in bench/http_overhead.py
        ratio = ratios[(m, "repeated")]
        verdict = ("PASS" if ratio >= TARGET else "MISS") if m in JUDGED else "(reference, not judged)"
        lines.append(
            f"\n{m}: repeated inputs {ratio:.2f}x uncached (target >= {TARGET}x) {verdict}; "
            f"unique inputs (the cost of misses) {ratios[(m, 'unique')]:.2f}x"
        )
    lines.append(
        f"\nIn process (64 floats in, 10 out): key {costs['key']:.1f} us, miss lookup + store "
        f"{costs['miss']:.1f} us, hit lookup + copy {costs['hit']:.1f} us per request"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
