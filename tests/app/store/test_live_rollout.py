"""Live rollout on an object store, per backend: a replica's HTTP server (the one a ModelServer replica
runs) serving 24 models from the store under load while the store and the config change.

- a version published to the bucket by ``python -m manymodels publish`` is served within
  ``refresh_interval_s`` + load time, with no failed request;
- an alias moved in ``aliases.json`` (``python -m manymodels alias``) and one moved by
  ``reconfigure`` are both applied, and neither is undone by later refresh rounds;
- every artifact is downloaded once (the disk tier's count, and the server's own GET count), the
  tier stays within its budget and holds one folder per artifact, whatever the number of rounds.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import store_servers

from manymodels.config import ServerConfig
from manymodels.metrics import Metrics
from manymodels.serve.embedded import EmbeddedServer
from manymodels.store import ModelManifest, publish_version

N_MODELS = 24
CLIENTS = 8
REFRESH_S = 1.0
ROW = np.random.default_rng(2).standard_normal(64).astype(np.float32).tolist()


@dataclass
class Traffic:
    """CLIENTS keep-alive clients sending /predict, model drawn from Zipf(1.0) over the catalog."""

    url: str
    models: list[str]
    answers: list[tuple[float, str, int, str]] = field(default_factory=list)  # (t, model, status, ver)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        weights = 1.0 / np.arange(1, len(self.models) + 1)
        rng = np.random.default_rng(7)

        async def client() -> None:
            async with httpx.AsyncClient(base_url=self.url, timeout=30) as http:
                while not self.stop.is_set():
                    model = self.models[rng.choice(len(self.models), p=weights / weights.sum())]
                    r = await http.post("/predict", json={"model": model, "input_data": ROW})
                    version = r.json().get("version", "") if r.status_code == 200 else r.text
                    self.answers.append((time.monotonic(), model, r.status_code, version))

        async def main() -> None:
            await asyncio.gather(*(client() for _ in range(CLIENTS)))

        asyncio.run(main())

    def first_answer(self, model: str, version: str, since: float) -> float | None:
        return next(
            (t for t, m, s, v in list(self.answers) if m == model and v == version and t >= since), None
        )

    def failures(self) -> list[tuple[float, str, int, str]]:
        return [a for a in self.answers if a[2] != 200]


def cli(*args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "manymodels", *args], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def wait_until(condition: Any, timeout: float, what: str) -> float:
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.monotonic() - started


def publish_catalog(root: str, options: dict[str, Any], demo: Path) -> dict[str, ModelManifest]:
    """m-00 ... m-23, version 1 each, from the six demo MLPs' artifacts (so 6 distinct artifacts)."""
    published = {}
    for i in range(N_MODELS):
        source = demo / f"mlp-{i % 6:03d}" / "1"
        spec = json.loads((source / "manifest.json").read_text())
        published[f"m-{i:02d}"] = publish_version(
            root,
            f"m-{i:02d}",
            "1",
            runtime="onnx",
            artifact=source / "model.onnx",
            inputs=spec["inputs"],
            outputs=spec["outputs"],
            storage_options=options,
        )
    return published


@pytest.fixture(params=["s3", "az", "gs"])
def remote(request: pytest.FixtureRequest, tmp_path: Path) -> store_servers.StoreRoot:
    """A fresh prefix in the S3, Azure Blob or GCS server's bucket (conftest's servers)."""
    server = request.getfixturevalue(f"{request.param}_server")
    return store_servers.StoreRoot(request.param, server.new_root(), tmp_path, server)


def test_live_rollout_on_the_object_store(
    remote: store_servers.StoreRoot, demo_catalog: Path, tmp_path: Path
) -> None:
    backend = remote
    root, options = backend.root, backend.storage_options or {}
    published = publish_catalog(root, options, demo_catalog)
    # m-02 has a version 2 from the start, held back by a config alias until reconfigure moves it.
    spec = json.loads((demo_catalog / "mlp-005" / "1" / "manifest.json").read_text())
    publish_version(
        root, "m-02", "2", runtime="onnx", artifact=demo_catalog / "mlp-002" / "1" / "model.onnx",
        inputs=spec["inputs"], outputs=spec["outputs"], storage_options=options,
    )  # fmt: skip
    tier = tmp_path / "tier"
    store = {
        "uri": root,
        "storage_options": options,
        "disk_cache_dir": str(tier),
        "disk_cache_bytes": "64Mi",
        "refresh_interval_s": REFRESH_S,
    }
    raw = {
        "store": store,
        "cache": {"capacity_bytes": "256Mi"},
        "models": {"m-02": {"aliases": {"stable": "1"}}},
    }
    server = EmbeddedServer(ServerConfig.model_validate(raw), Metrics("t"), "127.0.0.1", 0)
    port = server.start()
    traffic = Traffic(f"http://127.0.0.1:{port}", [f"m-{i:02d}" for i in range(N_MODELS)])
    clients = threading.Thread(target=traffic.run)
    clients.start()
    try:
        wait_until(lambda: len(traffic.answers) > 200, 30, "first answers")

        # 1. A new version of the hottest model, published by the CLI while traffic flows.
        artifact = tmp_path / "v2.onnx"
        artifact.write_bytes((demo_catalog / "mlp-000" / "2" / "model.onnx").read_bytes())  # new bytes
        cli("publish", root, "m-00", "2", str(artifact), "--storage-options", json.dumps(options))
        published_at = time.monotonic()
        wait_until(lambda: traffic.first_answer("m-00", "2", published_at), REFRESH_S + 10, "m-00 v2")
        rollout_s = traffic.first_answer("m-00", "2", published_at) - published_at  # type: ignore[operator]

        # 2. aliases.json moved in the store (m-01: v2 published, stable kept on 1) ...
        publish_version(
            root, "m-01", "2", runtime="onnx", artifact=artifact, inputs=spec["inputs"],
            outputs=spec["outputs"], storage_options=options,
        )  # fmt: skip
        cli("alias", root, "m-01", "stable", "1", "--storage-options", json.dumps(options))
        # ... and a config alias moved by reconfigure (m-02 stable -> 2), while refresh rounds run.
        moved = ServerConfig.model_validate({**raw, "models": {"m-02": {"aliases": {"stable": "2"}}}})
        server.submit(server.plane.reconfigure(moved)).result(timeout=60)
        rounds = server.plane.live.refreshes
        wait_until(lambda: server.plane.live.refreshes >= rounds + 3, 30 * REFRESH_S, "three more rounds")
        since = time.monotonic()
        wait_until(lambda: traffic.first_answer("m-02", "2", since), 10, "m-02 on its new stable")
        time.sleep(1.0)
    finally:
        traffic.stop.set()
        clients.join(60)
        disk = server.plane.live.store.disk  # type: ignore[attr-defined]
        stats, usage = disk.stats(), disk.usage_bytes()
        server.stop()

    assert traffic.failures() == []
    recent = [(m, v) for t, m, s, v in traffic.answers if t >= since]
    assert {v for m, v in recent if m == "m-00"} == {"2"}
    assert {v for m, v in recent if m == "m-01"} == {"1"}  # the store's alias, after every round
    assert {v for m, v in recent if m == "m-02"} == {"2"}  # the config's move, after every round
    shas = {m.sha256 for m in published.values()}
    assert len(shas) == 6
    assert stats["downloads"] == len(shas) + 1  # + the CLI's v2 (m-01 v2 has the same bytes)
    assert usage <= 64 * 2**20
    assert len([p for p in tier.iterdir() if p.name != ".tmp"]) == stats["downloads"]
    gets = backend.artifact_gets()
    if gets is not None:  # the server's own count of artifact downloads, where the backend keeps one
        assert max(Counter(gets).values()) == 1, gets
    print(
        f"\n[live-rollout {backend.name}] {len(traffic.answers)} requests, 0 failed; published v2 served "
        f"{rollout_s:.2f} s after the CLI returned (refresh {REFRESH_S} s); {stats['downloads']} downloads"
    )
