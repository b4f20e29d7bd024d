"""A real Serve deployment (local Ray, Gateway + 2 ModelServer replicas) shared by a module."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from processes import free_port

from manymodels.config import load_serve_config
from manymodels.demo.__main__ import DEFAULT_CONFIG


@dataclass
class Deployment:
    url: str
    ray_proxy_url: str
    root: Path
    config: dict[str, Any]

    def server_config(self) -> dict[str, Any]:
        apps = self.config["applications"][0]["deployments"]
        return next(d for d in apps if d["name"] == "ModelServer")["user_config"]

    def redeploy(self, config: dict[str, Any]) -> None:
        from manymodels.serve import local

        local.deploy(config)
        self.config = config

    def edited(self) -> dict[str, Any]:
        return copy.deepcopy(self.config)


@pytest.fixture(scope="session")
def served(
    demo_catalog: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch_session: Any
) -> Iterator[Deployment]:
    from manymodels.serve import local

    root = tmp_path_factory.mktemp("served") / "models"
    shutil.copytree(demo_catalog, root)
    port, ray_port = free_port(), free_port()
    monkeypatch_session.setenv("MM_MODEL_ROOT", str(root))
    monkeypatch_session.setenv("MM_PORT", str(port))
    monkeypatch_session.setenv("MM_RAY_PROXY_PORT", str(ray_port))
    config = load_serve_config(DEFAULT_CONFIG)
    server = next(d for d in config["applications"][0]["deployments"] if d["name"] == "ModelServer")[
        "user_config"
    ]
    server["store"]["refresh_interval_s"] = 1.0
    server["cache"]["prefetch"] = ["text-sentiment"]
    local.start_ray(num_cpus=4)
    local.deploy(config)
    url = local.wait_ready(config, timeout=240)
    yield Deployment(url, f"http://127.0.0.1:{ray_port}", root, config)
    local.shutdown()


@pytest.fixture(scope="session")
def monkeypatch_session() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch
