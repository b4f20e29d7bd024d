"""Fixtures for the serving-image tests: a private Docker daemon (DOCKER_HOST), the CPU image, a demo
catalog mounted read-only, and a running container on a random host port.

Run through `make test-image` (ci/image-env.sh starts the daemon and builds the image). Outside it
the tests skip, unless MM_IMAGE_REQUIRED=1 (set by the make target) turns a missing daemon or image
into a failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from image_helpers import CPU_IMAGE, ROOT, wait_ready


def _unavailable(reason: str) -> None:
    if os.environ.get("MM_IMAGE_REQUIRED") == "1":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def docker_client():
    try:
        import docker
        import testcontainers  # noqa: F401
    except ImportError as exc:
        _unavailable(f"{exc.name} is missing: pip install -r requirements-dev.txt (testcontainers)")
    if not os.environ.get("DOCKER_HOST"):
        _unavailable("DOCKER_HOST is not set: run `make test-image` (ci/image-env.sh)")
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")  # Ryuk's image cannot be pulled
    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:  # noqa: BLE001 - any failure means "no daemon here"
        _unavailable(f"no Docker daemon at {os.environ['DOCKER_HOST']}: {exc}")
    yield client
    client.close()


def require_image(client, name: str) -> None:
    import docker.errors

    try:
        client.images.get(name)
    except docker.errors.ImageNotFound:
        _unavailable(f"image {name} is not built: run `make image`")


@pytest.fixture(scope="session")
def cpu_image(docker_client) -> str:
    require_image(docker_client, CPU_IMAGE)
    return CPU_IMAGE


@pytest.fixture(scope="session")
def catalog(tmp_path_factory) -> Path:
    """The demo catalog (3 MLPs + text classifier + 2 torch models), with mlp-002's artifact corrupted."""
    base = tmp_path_factory.mktemp("image-catalog")
    base.chmod(0o755)
    root = base / "models"
    subprocess.run(
        [sys.executable, "-m", "manymodels.demo.catalog", "--out", str(root), "--mlp", "3"]
        + ([] if importlib.util.find_spec("torch") else ["--no-torch"]),
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    artifact = root / "mlp-002" / "1" / "model.onnx"
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(bytes(data))
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


class Served:
    def __init__(self, container, url: str, ready_s: float) -> None:
        self.container = container
        self.url = url
        self.ready_s = ready_s

    def post(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, timeout=60)


@pytest.fixture(scope="module")
def served(cpu_image: str, catalog: Path) -> Iterator[Served]:
    """The CPU image started standalone (no arguments), catalog mounted read-only at /models."""
    from testcontainers.core.container import DockerContainer

    container = (
        DockerContainer(cpu_image)
        .with_exposed_ports(8000)  # random host port
        .with_volume_mapping(str(catalog), "/models", "ro")
        .with_kwargs(shm_size="1g")
        .with_env("MM_REPLICAS", "1")
    )
    container.start()
    try:
        host = container.get_container_host_ip()
        url = f"http://{host}:{container.get_exposed_port(8000)}"
        ready_s = wait_ready(container, url)
        print(f"\n[image] {cpu_image} ready in {ready_s:.1f} s at {url}")
        yield Served(container, url, ready_s)
    finally:
        with contextlib.suppress(Exception):  # already gone after the SIGTERM test
            container.stop()


@pytest.fixture(scope="session")
def run_once(docker_client):
    """Run a one-off command in an image; returns (exit code, output)."""
    created = []

    def run(image: str, command, **kwargs) -> tuple[int, str]:
        container = docker_client.containers.run(image, command, detach=True, **kwargs)
        created.append(container)
        result = container.wait(timeout=120)
        return result["StatusCode"], container.logs().decode(errors="replace")

    yield run
    for container in created:
        with contextlib.suppress(Exception):
            container.remove(force=True)


def pytest_configure(config) -> None:
    config.addinivalue_line("markers", "image: runs the serving image in a container (make test-image)")
