"""Overload and backpressure: one ModelServer replica with max_ongoing_requests=8 behind the real Gateway.

First exactly 8 closed-loop clients (the replica saturated, no excess), then 32 (4x), twice: clients
that retry a 503 at once (a plain closed loop: a retry storm) and clients that wait the Retry-After
they are given. Printed, against the 8-client run of the same process: the admitted requests' p99
(target <= 2x), the share of the excess answered 503 with Retry-After (target 100%) and the 503s'
latency (target: every one within 50 ms), and connection errors (target 0). The model (a
256-2048-2048-10 MLP, a few ms per request on one core) makes the replica the bottleneck, not the client.

The three runs are interleaved over several rounds and pooled, so a shared machine's background load
falls on all of them alike.

Usage: python bench/overload.py [--seconds 4] [--rounds 3] [--max-queued 4] [--quick]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).parent))
from http_overhead import free_port  # noqa: E402
from loadgen import Result, post_request, run_load  # noqa: E402
from mlp_catalog import publish_mlp, session_run_ms, write_mlp  # noqa: E402

from manymodels.config import load_serve_config  # noqa: E402
from manymodels.demo.__main__ import DEFAULT_CONFIG  # noqa: E402

HOST = "127.0.0.1"
MODEL = "mlp-2048"
DIMS = [256, 2048, 2048, 10]
MAX_ONGOING = 8
SATURATED, OVERLOADED = MAX_ONGOING, 4 * MAX_ONGOING
REJECT_WITHIN_MS = 50.0
SAMPLE = np.random.default_rng(1).random(DIMS[0]).astype(np.float32).round(4).tolist()


def build_catalog(root: Path) -> float:
    """Publish the model; returns its raw service time (ms, one ONNX Runtime thread, batch 1)."""
    artifact = write_mlp(root.parent / "model.onnx", DIMS, np.random.default_rng(0))
    publish_mlp(root, MODEL, artifact, DIMS)
    return session_run_ms(artifact, np.asarray([SAMPLE], dtype=np.float32), runs=100)


def app_config(root: Path, port: int, ray_port: int, max_queued: int) -> dict:
    os.environ.update(MM_MODEL_ROOT=str(root), MM_PORT=str(port), MM_RAY_PROXY_PORT=str(ray_port))
    config = load_serve_config(DEFAULT_CONFIG)
    server, _ = config["applications"][0]["deployments"]
    server.update(num_replicas=1, max_ongoing_requests=MAX_ONGOING, max_queued_requests=max_queued)
    server["user_config"].update(default_model=None, models={})
    server["user_config"]["cache"] = {"capacity_bytes": "1Gi", "prefetch": [MODEL]}
    return config


def metric_sum(url: str, name: str, **labels: str) -> float:
    """Sum of one metric's samples (matching ``labels``) on the node's /metrics page."""
    total = 0.0
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def wait_for_limits(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while metric_sum(url, "manymodels_gateway_max_ongoing_requests") != MAX_ONGOING:
        if time.monotonic() > deadline:
            raise TimeoutError("the Gateway never applied max_ongoing_requests")
        time.sleep(0.5)


def pooled(results: list[Result]) -> Result:
    total = Result()
    for r in results:
        total.requests += r.requests
        total.errors += r.errors
        total.seconds += r.seconds
        total.latencies += r.latencies
        total.rejected += r.rejected
        total.rejected_latencies += r.rejected_latencies
        total.rejected_without_retry_after += r.rejected_without_retry_after
        total.connection_errors += r.connection_errors
    return total


def row(clients: int, behaviour: str, r: Result) -> str:
    other = r.errors - r.rejected - r.connection_errors
    slowest = max(r.rejected_latencies, default=0.0) * 1000
    return (
        f"| {clients} | {behaviour} | {r.rps:7.0f} | {r.pct(50):6.1f} | {r.pct(99):6.1f} | {r.rejected} "
        f"| {r.rejected_pct(50):5.2f} | {r.rejected_pct(99):5.2f} | {slowest:5.1f} "
        f"| {r.rejected_without_retry_after} | {other} | {r.connection_errors} |"
    )


def verdict(name: str, r: Result, base: Result) -> list[str]:
    ratio = r.pct(99) / base.pct(99)
    answered = r.errors - r.connection_errors  # every request that got an answer other than 200
    proper = r.rejected - r.rejected_without_retry_after
    share = proper / answered if answered else float("nan")
    slowest = max(r.rejected_latencies, default=0.0) * 1000
    within = sum(lat * 1000 <= REJECT_WITHIN_MS for lat in r.rejected_latencies)

    def mark(ok: bool) -> str:
        return "PASS" if ok else "MISS"

    return [
        f"{name}:",
        f"  admitted p99 at {OVERLOADED} / at {SATURATED} clients: {ratio:.2f}x (target <= 2x) "
        f"{mark(ratio <= 2)}",
        f"  excess answered 503 with Retry-After: {proper}/{answered} = {share:.1%} (target 100%) "
        f"{mark(answered > 0 and proper == answered)}",
        f"  503 latency: max {slowest:.1f} ms, {within}/{r.rejected} within {REJECT_WITHIN_MS:.0f} ms "
        f"(target: all) {mark(r.rejected > 0 and within == r.rejected)}",
        f"  connection errors: {r.connection_errors} (target 0) {mark(r.connection_errors == 0)}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per run and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-queued", type=int, default=MAX_ONGOING // 2, help="max_queued_requests")
    parser.add_argument("--quick", action="store_true", help="2-second runs (smoke test)")
    args = parser.parse_args()
    seconds, warmup, rounds = (2.0, 0.5, 1) if args.quick else (args.seconds, 1.0, args.rounds)
    from manymodels.serve import local

    with tempfile.TemporaryDirectory(prefix="mm-bench-") as tmp:
        root = Path(tmp) / "models"
        service_ms = build_catalog(root)
        port, ray_port = free_port(), free_port()
        config = app_config(root, port, ray_port, args.max_queued)
        local.start_ray(num_cpus=4)
        try:
            local.deploy(config)
            url = local.wait_ready(config)
            wait_for_limits(url)
            body = orjson.dumps({"model": MODEL, "input_data": SAMPLE})
            requests = [post_request(HOST, port, "/predict", body)]

            def load(clients: int, polite: bool = False) -> Result:
                return run_load(
                    HOST, port, requests, clients=clients, seconds=seconds, warmup=warmup,
                    honor_retry_after=polite,
                )  # fmt: skip

            gateway_before = metric_sum(url, "manymodels_gateway_rejected_total", reason="queue_full")
            runs: dict[str, list[Result]] = {"base": [], "storm": [], "polite": []}
            for _ in range(rounds):
                runs["base"].append(load(SATURATED))
                runs["storm"].append(load(OVERLOADED))
                runs["polite"].append(load(OVERLOADED, polite=True))
            base, storm, polite = (pooled(runs[k]) for k in ("base", "storm", "polite"))
            gateway = metric_sum(url, "manymodels_gateway_rejected_total", reason="queue_full")
            replica = metric_sum(url, "manymodels_requests_rejected_total")
        finally:
            local.shutdown()

    load_avg = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print("## Overload and backpressure\n")
    print(
        f"{datetime.date.today()}, {platform.machine()}, {os.cpu_count()} cores, load average {load_avg} "
        f"at the end; {rounds} round(s) of the three runs, {seconds:.0f} s each after {warmup:.1f} s of "
        "warm-up, pooled"
    )
    print(
        f"1 replica, max_ongoing_requests={MAX_ONGOING}, max_queued_requests={args.max_queued}, model "
        f"{'-'.join(map(str, DIMS))} MLP ({service_ms:.2f} ms raw session.run, 1 thread), real Gateway\n"
    )
    print(
        "| clients | on 503 | admitted rps | p50 ms | p99 ms | 503s | 503 p50 ms | 503 p99 ms "
        "| 503 max ms | 503 w/o Retry-After | other errors | connection errors |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(row(SATURATED, "-", base))
    print(row(OVERLOADED, "retry at once", storm))
    print(row(OVERLOADED, "wait Retry-After", polite))
    print()
    saturated_ok = base.errors == 0
    print(
        f"{SATURATED} clients (saturated, no excess): {base.errors} non-200 (target 0) "
        f"{'PASS' if saturated_ok else 'MISS'}"
    )
    print("\n".join(verdict(f"{OVERLOADED} clients retrying at once", storm, base)))
    print("\n".join(verdict(f"{OVERLOADED} clients waiting Retry-After", polite, base)))
    seen = base.rejected + storm.rejected + polite.rejected  # warm-ups excluded, so the Gateway saw more
    print(
        f"\nGateway counted {gateway - gateway_before:.0f} queue-full 503s (clients counted {seen} outside "
        f"warm-ups); replicas refused {replica:.0f} themselves (one Gateway: HAProxy's maxconn holds)"
    )


if __name__ == "__main__":
    main()
