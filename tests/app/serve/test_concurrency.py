"""max_ongoing_requests and max_queued_requests enforced end to end on a real local Ray: a second
application beside the shared one (its own Gateway and one ModelServer replica) serves a model that
holds each request until the test releases it, so every count below is decided by the limits alone.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from held_model import WIDTH, Held
from processes import free_port
from prometheus_client.parser import text_string_to_metric_families

from manymodels.config import APP_IMPORT_PATH
from manymodels.serve.haproxy_config import QUEUE_FULL
from manymodels.store import TensorSpec, publish_version

pytestmark = pytest.mark.integration

APP = "limits"
HELD = {"model": "held", "input_data": [[1.0] * WIDTH]}


def publish_held(root: Path) -> None:
    weights = root.parent / "held.pt"
    torch.save(Held(release="unused").state_dict(), weights)
    spec = [-1, WIDTH]
    publish_version(
        root,
        "held",
        "1",
        runtime="torch",
        format="torch_state_dict",
        artifact=weights,
        inputs=[TensorSpec(name="input", dtype="float32", shape=spec)],
        outputs=[TensorSpec(name="output", dtype="float32", shape=spec)],
    )


def application(root: Path, release: Path, port: int, max_ongoing: int, max_queued: int) -> dict[str, Any]:
    path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    held = {"module": "held_model:Held", "module_options": {"release": str(release)}}
    return {
        "name": APP,
        "route_prefix": f"/{APP}",
        "import_path": APP_IMPORT_PATH,
        # the replica imports held_model (this folder) like a module shipped in an image
        "runtime_env": {"env_vars": {"PYTHONPATH": path}},
        "deployments": [
            {
                "name": "ModelServer",
                "num_replicas": 1,
                "max_ongoing_requests": max_ongoing,
                "max_queued_requests": max_queued,
                "ray_actor_options": {"num_cpus": 0.5},
                "user_config": {
                    "store": {"uri": str(root), "refresh_interval_s": 0},
                    "inline_infer_max_ms": 0,  # every inference in a thread: held ones block no one
                    "models": {"held": held},
                },
            },
            {
                "name": "Gateway",
                "num_replicas": 1,
                "ray_actor_options": {"num_cpus": 0},
                "user_config": {"port": port, "health_interval_ms": 200},
            },
        ],
    }


def values(page: str, name: str, **labels: str) -> list[float]:
    return [
        s.value
        for family in text_string_to_metric_families(page)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_limits_are_enforced_through_the_gateway_and_by_the_replica(served, tmp_path: Path) -> None:
    from ray import serve

    from manymodels.serve import registry

    root = tmp_path / "models"
    publish_held(root)
    release = tmp_path / "release"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    original = served.config
    config = served.edited()
    config["applications"].append(application(root, release, port, max_ongoing=2, max_queued=2))
    served.redeploy(config)
    try:

        def ready() -> bool:
            status = serve.status().applications.get(APP)
            assert status is None or "FAIL" not in str(status.status), status
            try:
                return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        def metrics(base: str = url) -> str:
            return httpx.get(base + "/metrics", timeout=10).text

        wait_for("the application", ready)
        limit = "manymodels_gateway_max_ongoing_requests"
        wait_for("the gateway's limits", lambda: values(metrics(), limit) == [2])
        [replica] = registry.endpoints(APP)
        direct = f"http://{replica.host}:{replica.port}"

        with ThreadPoolExecutor(12) as pool:

            def send(base: str) -> Future[httpx.Response]:
                return pool.submit(httpx.post, base + "/predict", json=HELD, timeout=120)

            # Through the Gateway: 2 run (maxconn), 2 wait in its queue, 4 are refused at once.
            gateway = [send(url) for _ in range(8)]
            wait_for("the refusals", lambda: sum(f.done() for f in gateway) >= 4, timeout=60)
            refused = [f.result() for f in gateway if f.done()]
            for response in refused:
                assert response.status_code == 503, response.text
                assert response.headers["retry-after"] == "1"
                assert response.json() == {"error": QUEUE_FULL}
            page = metrics()
            assert values(page, "manymodels_gateway_inflight") == [2]
            assert values(page, "manymodels_gateway_queued") == [2]
            assert values(page, "manymodels_gateway_rejected_total", reason="queue_full") == [4]
            assert values(page, "manymodels_requests_inflight") == [2]
            # Health checks and metadata are answered while every slot is taken.
            assert httpx.get(url + "/-/healthz", timeout=10).text == "success"
            assert httpx.get(url + "/v2/health/ready", timeout=10).status_code == 200
            assert httpx.get(url + "/v2/models/held", timeout=10).status_code == 200

            # Past HAProxy (a second Gateway, a direct client): the replica itself queues 2, refuses more.
            bypass = [send(direct) for _ in range(2)]
            queued = "manymodels_requests_queued"
            wait_for("the replica's queue", lambda: values(metrics(direct), queued) == [2])
            extra = httpx.post(direct + "/predict", json=HELD, timeout=30)
            assert extra.status_code == 503 and extra.headers["retry-after"] == "1"
            assert "max_ongoing_requests=2" in extra.json()["error"]
            assert sum(f.done() for f in gateway) == 4 and not any(f.done() for f in bypass)

            release.touch()
            through = Counter(f.result().status_code for f in gateway)
            around = Counter(f.result().status_code for f in bypass)
        assert through == {200: 4, 503: 4}
        assert around == {200: 2}
        page = metrics()
        assert values(page, "manymodels_requests_rejected_total", reason="queue_full") == [1]
        assert values(page, "manymodels_requests_inflight") == [0]
        assert values(page, "manymodels_gateway_queued") == [0]

        # New limits reach the Gateway from the Serve controller without a restart.
        config["applications"][-1] = application(root, release, port, max_ongoing=3, max_queued=5)
        served.redeploy(config)
        wait_for(
            "the new limits",
            lambda: (
                (
                    values(metrics(), "manymodels_gateway_max_ongoing_requests"),
                    values(metrics(), "manymodels_gateway_max_queued_requests"),
                )
                == ([3], [5])
            ),
            timeout=60,
        )
    finally:
        release.touch()
        served.redeploy(original)
