"""The CPU image run the way Azure ML runs a custom container (docs/azureml.md): the registered catalog
folder mounted read-only under /var/azureml-app/azureml-models/<name>/<version>/, AZUREML_MODEL_DIR
pointing there, the deployment YAML's environment variables, probes on its liveness and readiness
routes until ready, then scoring through its scoring route. The same image in forwarding mode (the
Kubernetes online deployment) scores through the first container as its serve Service.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from image_helpers import READY_TIMEOUT_S, ROOT, SAMPLE, logs

pytestmark = pytest.mark.image

DEPLOY = ROOT / "deploy" / "azureml"
MODELS = "/var/azureml-app/azureml-models"
MODEL_DIR = f"{MODELS}/manymodels-catalog/1"


def deployment(name: str) -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / name).read_text())


class Container:
    def __init__(self, container, routes: dict[str, str], port: int) -> None:
        self.container = container
        self.routes = routes
        host = container.get_container_host_ip()
        self.url = f"http://{host}:{container.get_exposed_port(port)}"

    def route(self, kind: str) -> str:
        return self.url + self.routes[kind]

    def probe_until_ready(self) -> float:
        """Azure ML's order: liveness first (the container is restarted while it fails), then
        readiness (no traffic until it passes)."""
        started = time.monotonic()
        wrapped = self.container.get_wrapped_container()
        for kind in ("liveness_route", "readiness_route"):
            while True:
                wrapped.reload()
                assert wrapped.status == "running", f"container exited:\n{logs(self.container)}"
                assert time.monotonic() - started < READY_TIMEOUT_S, (
                    f"{kind} never passed:\n{logs(self.container)}"
                )
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(self.route(kind), timeout=5).status_code == 200:
                        break
                time.sleep(1)
        return time.monotonic() - started


def start(image: str, spec: dict[str, Any], **extra_env: str) -> tuple[Any, dict[str, str], int]:
    from testcontainers.core.container import DockerContainer

    config = spec["environment"]["inference_config"]
    routes = {kind: route["path"] for kind, route in config.items()}
    [port] = {route["port"] for route in config.values()}
    container = DockerContainer(image).with_exposed_ports(port).with_kwargs(shm_size="1g")
    for name, value in {**spec["environment_variables"], **extra_env}.items():
        container = container.with_env(name, str(value))
    return container, routes, port


@pytest.fixture(scope="module")
def mounted(catalog: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """azureml-models/<name>/<version>/models/: a model registered from the folder 'models'."""
    base = tmp_path_factory.mktemp("azureml-models")
    base.chmod(0o755)
    version_dir = base / "manymodels-catalog" / "1"
    shutil.copytree(catalog, version_dir / "models")
    for path in [base, *base.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return base


@pytest.fixture(scope="module")
def managed(cpu_image: str, mounted: Path) -> Iterator[Container]:
    spec = deployment("managed/deployment-cpu.yml")
    # MM_REPLICAS=1 as in the other image tests (a small CI machine); everything else as in the YAML.
    container, routes, port = start(cpu_image, spec, AZUREML_MODEL_DIR=MODEL_DIR, MM_REPLICAS="1")
    container = container.with_volume_mapping(str(mounted), MODELS, "ro")
    container.start()
    try:
        served = Container(container, routes, port)
        ready_s = served.probe_until_ready()
        print(f"\n[image] Azure ML contract: ready in {ready_s:.1f} s at {served.url}")
        yield served
    finally:
        container.stop()


def test_catalog_from_azureml_model_dir(managed: Container) -> None:
    assert f"serving the catalog Azure ML mounted at {MODEL_DIR}/models (AZUREML_MODEL_DIR)" in logs(
        managed.container
    )
    live = httpx.get(managed.route("liveness_route"), timeout=5)
    assert live.status_code == 200 and live.json() == {"live": True}
    assert httpx.get(managed.route("readiness_route"), timeout=5).json() == {"ready": True}


def test_scoring_route_speaks_predict(managed: Container) -> None:
    score = managed.route("scoring_route")
    body = {"model": "mlp-000", "input_data": SAMPLE}
    via = httpx.post(score, json=body, timeout=60)
    assert via.status_code == 200, via.text
    assert via.json() == httpx.post(f"{managed.url}/predict", json=body, timeout=60).json()
    assert via.json()["model"] == "mlp-000"
    # No model named: the deployment's MM_DEFAULT_MODEL.
    text = httpx.post(score, json={"input_data": "I love this, it works great"}, timeout=60)
    assert text.status_code == 200 and text.json()["model"] == "text-sentiment", text.text


@pytest.mark.parametrize(
    "content, status, match",
    [
        (b'{"model": "no-such-model", "input_data": [1]}', 404, "not found"),
        (b'{"model": "mlp-000"}', 400, "missing 'input_data'"),
        (b"{not json", 400, "malformed JSON"),
        (b'{"model": "mlp-002", "input_data": [1]}', 422, "sha256"),  # the corrupted artifact
    ],
)
def test_scoring_route_errors_are_json(managed: Container, content: bytes, status: int, match: str) -> None:
    answer = httpx.post(
        managed.route("scoring_route"),
        content=content,
        headers={"content-type": "application/json"},
        timeout=60,
    )
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    assert match in answer.json()["error"]
    assert httpx.get(managed.route("readiness_route"), timeout=5).status_code == 200  # still serving


def test_forwarding_mode_scores_through_the_serve_container(cpu_image: str, managed: Container) -> None:
    """The Kubernetes deployment's YAML, its MM_FORWARD_URL pointed at the container above."""
    serve_ip = managed.container.get_wrapped_container().attrs["NetworkSettings"]["IPAddress"]
    spec = deployment("kubernetes/deployment.yml")
    container, routes, port = start(cpu_image, spec, MM_FORWARD_URL=f"http://{serve_ip}:8000")
    container.start()
    try:
        forwarder = Container(container, routes, port)
        forwarder.probe_until_ready()
        assert "Ray" not in logs(container)  # a plain forwarder, no Ray in this mode
        body = {"model": "mlp-001", "input_data": SAMPLE}
        via = httpx.post(forwarder.route("scoring_route"), json=body, timeout=60)
        assert via.status_code == 200, via.text
        assert via.json() == httpx.post(managed.route("scoring_route"), json=body, timeout=60).json()
        wrong = httpx.post(
            forwarder.route("scoring_route"), json={"model": "no-such-model", "input_data": [1]}
        )
        assert wrong.status_code == 404 and "not found" in wrong.json()["error"]
    finally:
        container.stop()


def test_no_catalog_in_the_mount_fails_loudly(run_once, cpu_image: str, tmp_path: Path) -> None:
    empty = tmp_path / "azureml-models" / "manymodels-catalog" / "1"
    empty.mkdir(parents=True)
    (empty / "model.onnx").write_bytes(b"not a catalog")
    for path in [tmp_path, *tmp_path.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    code, out = run_once(
        cpu_image,
        None,
        environment={"AZUREML_MODEL_DIR": MODEL_DIR},
        volumes={str(tmp_path / "azureml-models"): {"bind": MODELS, "mode": "ro"}},
    )
    assert code != 0, out
    assert f"AZUREML_MODEL_DIR={MODEL_DIR} holds no model catalog" in out and "model.onnx" in out, out
    assert "starting Ray" not in out, out
