"""HTTP overhead and model-aware routing, each against baselines measured in the same run.

1. Overhead: the real server (Gateway HAProxy -> one ModelServer replica) vs a bare
   uvicorn + starlette + onnxruntime app serving the same models, same client; 1 and 8 clients;
   one hot model and a rotating set. Ray's own proxy path is measured too, for reference.
2. Routing: 2 replicas, more models than one replica holds but fewer than both hold together,
   8 clients, uniform and Zipf mixes: the Gateway's bounded-load consistent hashing vs the same
   replicas behind HAProxy leastconn vs Ray Serve's multiplexing with its default router.

Usage: python bench/http_overhead.py [--seconds 8] [--quick]
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from loadgen import Result, post_request, run_load  # noqa: E402

from manymodels.config import load_serve_config  # noqa: E402
from manymodels.demo.__main__ import DEFAULT_CONFIG  # noqa: E402
from manymodels.demo.catalog import _init, mlp_onnx  # noqa: E402
from manymodels.runtimes import RuntimeSettings, load_model  # noqa: E402
from manymodels.store import LocalStore, TensorSpec, publish_version  # noqa: E402

HOST = "127.0.0.1"
N_MODELS = 12  # routing: more than one replica holds, fewer than two hold
PER_REPLICA = 8
ROTATING = 8  # overhead: the rotating set (all resident)
SAMPLE = np.random.default_rng(1).random(64).astype(np.float32).round(4).tolist()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def build_catalog(root: Path) -> int:
    """N_MODELS equal-size MLPs (64 -> 256 -> 10); returns one model's resident bytes."""
    rng = np.random.default_rng(0)
    work = root.parent / "artifacts"
    work.mkdir(exist_ok=True)
    for i in range(N_MODELS):
        artifact = work / f"m{i:02d}.onnx"
        artifact.write_bytes(mlp_onnx(_init(rng, [64, 256, 10]), "input", "logits"))
        publish_version(
            root,
            f"m{i:02d}",
            "1",
            runtime="onnx",
            artifact=artifact,
            inputs=[TensorSpec(name="input", dtype="float32", shape=[-1, 64])],
            outputs=[TensorSpec(name="logits", dtype="float32", shape=[-1, 10])],
        )
    store = LocalStore(root)
    loaded = load_model(store.manifest("m00", "1"), store.fetch("m00", "1"), RuntimeSettings())
    size = loaded.memory_bytes()
    loaded.close()
    return size


def bodies(
    port: int,
    models: list[str],
    n: int = 512,
    zipf: float | None = None,
    path: str = "/predict",
    header: str | None = None,
) -> list[bytes]:
    rng = np.random.default_rng(7)
    if zipf:
        weights = 1.0 / np.arange(1, len(models) + 1) ** zipf
        picks = rng.choice(len(models), size=n, p=weights / weights.sum())
    else:
        picks = np.arange(n) % len(models)
        rng.shuffle(picks)
    out = []
    for i in picks:
        body = orjson.dumps({"model": models[i], "input_data": SAMPLE})
        headers = {header: models[i]} if header else None
        out.append(post_request(HOST, port, path, body, headers))
    return out


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((HOST, port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {port}")


def node_loads(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    return sum(
        float(v) for v in re.findall(r"^manymodels_cache_loads_total\{.*\} (\S+)$", text, re.M)
    )


def app_config(
    root: Path, port: int, ray_port: int, replicas: int, capacity: int, routing: str = "model-hash"
) -> dict:
    os.environ.update(MM_MODEL_ROOT=str(root), MM_PORT=str(port), MM_RAY_PROXY_PORT=str(ray_port))
    config = load_serve_config(DEFAULT_CONFIG)
    server, gateway = config["applications"][0]["deployments"]
    server["num_replicas"] = replicas
    server["user_config"].update(default_model=None, models={})
    server["user_config"]["cache"] = {"capacity_bytes": capacity}
    gateway["user_config"]["routing"] = routing
    return config


def fmt(r: Result) -> str:
    return f"{r.rps:8.0f} rps  p50 {r.pct(50):6.2f} ms  p99 {r.pct(99):7.2f} ms"


def overhead(root: Path, size: int, seconds: float, ray_port: int) -> list[str]:
    from manymodels.serve import local

    models = [f"m{i:02d}" for i in range(ROTATING)]
    cases = [
        ("hot", ["m00"], 1),
        ("hot", ["m00"], 8),
        ("rotating", models, 1),
        ("rotating", models, 8),
    ]
    bare_port = free_port()
    bare = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("bare_server.py")), str(root), str(bare_port)]
    )
    try:
        wait_port(bare_port)
        base = {
            (n, c): run_load(HOST, bare_port, bodies(bare_port, m), clients=c, seconds=seconds)
            for n, m, c in cases
        }
    finally:
        bare.terminate()
        bare.wait()
    port = free_port()
    config = app_config(root, port, ray_port, replicas=1, capacity=(N_MODELS + 2) * size)
    local.deploy(config)
    url = local.wait_ready(config)
    ours = {
        (n, c): run_load(HOST, port, bodies(port, m), clients=c, seconds=seconds)
        for n, m, c in cases
    }
    ray_path = run_load(HOST, ray_port, bodies(ray_port, ["m00"]), clients=8, seconds=seconds)
    lines = [
        "| model mix | clients | bare uvicorn+starlette+ORT | manymodels (Gateway -> replica) "
        "| throughput ratio | p50 ratio | p99 ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, _, c in cases:
        b, o = base[(n, c)], ours[(n, c)]
        lines.append(
            f"| {n} | {c} | {fmt(b)} | {fmt(o)} | **{o.rps / b.rps:.2f}x** "
            f"| {o.pct(50) / b.pct(50):.2f}x | {o.pct(99) / b.pct(99):.2f}x |"
        )
        assert o.errors == 0 and b.errors == 0, (o.errors, b.errors)
    b = base[("hot", 8)]
    lines.append(
        f"| hot, via Ray's proxy (reference) | 8 | | {fmt(ray_path)} "
        f"| {ray_path.rps / b.rps:.2f}x | | |"
    )
    verdict = ours[("hot", 8)].rps / b.rps
    lines.append(
        f"\ntarget >= 0.5x bare throughput at 8 clients (hot): {verdict:.2f}x "
        f"{'PASS' if verdict >= 0.5 else 'FAIL'}"
    )
    del url
    return lines


def routing(root: Path, size: int, seconds: float, ray_port: int) -> list[str]:
    from ray import serve

    from manymodels.serve import local

    sys.path.insert(0, str(Path(__file__).parent))
    from ray_multiplexed import build

    models = [f"m{i:02d}" for i in range(N_MODELS)]
    capacity = PER_REPLICA * size + size // 2
    port = free_port()
    results: dict[tuple[str, str], tuple[Result, float]] = {}
    for router in ("model-hash", "leastconn"):
        config = app_config(root, port, ray_port, replicas=2, capacity=capacity, routing=router)
        local.deploy(config)
        url = local.wait_ready(config)
        time.sleep(3)  # both replicas registered with the gateway
        for mix, zipf in (("uniform", None), ("zipf-1.0", 1.0)):
            reqs = bodies(port, models, zipf=zipf)
            run_load(HOST, port, reqs, clients=8, seconds=seconds / 2, warmup=0)  # fill caches
            before = node_loads(url)
            r = run_load(HOST, port, reqs, clients=8, seconds=seconds, warmup=0)
            results[(router, mix)] = (r, (node_loads(url) - before) * 1000 / max(r.requests, 1))
    serve.delete("manymodels")
    serve.run(build(str(root), PER_REPLICA, 2), name="mux", route_prefix="/mux", blocking=False)
    for mix, zipf in (("uniform", None), ("zipf-1.0", 1.0)):
        reqs = bodies(ray_port, models, zipf=zipf, path="/mux", header="serve_multiplexed_model_id")
        warm = run_load(
            HOST, ray_port, reqs, clients=8, seconds=seconds / 2, warmup=0, watch="x-loads"
        )
        r = run_load(HOST, ray_port, reqs, clients=8, seconds=seconds, warmup=0, watch="x-loads")

        def total(res: Result) -> int:
            return sum(int(v.split("=")[1]) for v in res.headers.values())

        results[("ray-multiplexed", mix)] = (
            r,
            (total(r) - total(warm)) * 1000 / max(r.requests, 1),
        )
    serve.delete("mux")
    lines = [
        f"{N_MODELS} equal models, cache room for {PER_REPLICA} per replica, 2 replicas, "
        "8 clients; loads counted after a warm-up",
        "",
        "| router | mix | throughput | loads / 1000 requests | errors |",
        "|---|---|---|---|---|",
    ]
    names = {
        "model-hash": "manymodels Gateway (consistent hash, bounded load)",
        "leastconn": "HAProxy leastconn (same replicas)",
        "ray-multiplexed": "Ray Serve multiplexing, default router",
    }
    for (router, mix), (r, loads) in results.items():
        lines.append(f"| {names[router]} | {mix} | {fmt(r)} | {loads:.1f} | {r.errors} |")
    for mix in ("uniform", "zipf-1.0"):
        ours, lc = results[("model-hash", mix)], results[("leastconn", mix)]
        ok = ours[0].rps >= lc[0].rps and ours[1] <= 1.0
        lines.append(
            f"\n{mix}: throughput {ours[0].rps / lc[0].rps:.2f}x leastconn, "
            f"{ours[0].rps / results[('ray-multiplexed', mix)][0].rps:.2f}x Ray default; "
            f"{ours[1]:.2f} loads/1000 -> {'PASS' if ok else 'FAIL'} "
            "(target: >= leastconn throughput, <= 1 load per 1000)"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--quick", action="store_true", help="2-second runs (smoke test)")
    parser.add_argument("--only", choices=["overhead", "routing"])
    args = parser.parse_args()
    seconds = 2.0 if args.quick else args.seconds
    from manymodels.serve import local

    with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
        root = Path(tmp) / "models"
        size = build_catalog(root)
        local.start_ray(num_cpus=4)
        ray_port = free_port()  # Serve keeps its first proxy port for the whole run
        try:
            if args.only in (None, "overhead"):
                print("## HTTP overhead\n")
                print("\n".join(overhead(root, size, seconds, ray_port)), flush=True)
            if args.only in (None, "routing"):
                print("\n## Model-aware routing\n")
                print("\n".join(routing(root, size, seconds, ray_port)), flush=True)
        finally:
            local.shutdown()


if __name__ == "__main__":
    main()
