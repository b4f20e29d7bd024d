from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import store_servers

from manymodels.store import ModelManifest, TensorSpec, publish_version

INPUTS = [TensorSpec(name="x", dtype="float32", shape=[-1, 4])]
OUTPUTS = [TensorSpec(name="y", dtype="float32", shape=[-1, 2])]

Publish = Callable[..., ModelManifest]


@pytest.fixture
def publish(tmp_path: Path) -> Publish:
    """publish(root, model, version, data=bytes, name=file name) -> manifest, from a real file."""
    sources = tmp_path / "sources"
    sources.mkdir()

    def _publish(
        root: str | Path,
        model: str,
        version: str,
        data: bytes | None = None,
        name: str = "model.onnx",
        **kwargs: object,
    ) -> ModelManifest:
        src = sources / uuid.uuid4().hex / name
        src.parent.mkdir()
        src.write_bytes(data if data is not None else f"{model}:{version}".encode() * 100)
        return publish_version(
            root,
            model,
            version,
            runtime="onnx",
            artifact=src,
            inputs=INPUTS,
            outputs=OUTPUTS,
            **kwargs,
        )

    return _publish


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


# -- real object-store servers (store_servers.py): one per kind for the session, started on first use


@pytest.fixture(scope="session")
def s3_server() -> Iterator[store_servers.ObjectStoreServer]:
    """moto's S3 server behind a counting proxy, bucket ``manymodels-tests``."""
    with store_servers.s3_server() as server:
        yield server


@pytest.fixture(scope="session")
def az_server() -> Iterator[store_servers.ObjectStoreServer]:
    """Azurite's Blob service behind a counting proxy, container ``manymodels-tests``."""
    with store_servers.az_server() as server:
        yield server


@pytest.fixture(scope="session")
def gs_server() -> Iterator[store_servers.ObjectStoreServer]:
    """fake-gcs-server behind a counting proxy, bucket ``manymodels-tests``."""
    with store_servers.gs_server() as server:
        yield server


@pytest.fixture(params=["local", "s3", "az", "gs"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> store_servers.StoreRoot:
    """A fresh, empty store root on each backend in turn: a local directory, then a fresh prefix of
    the S3, Azure Blob and GCS servers' bucket (see StoreRoot for the helpers)."""
    if request.param == "local":
        root = tmp_path / "store"
        root.mkdir()
        return store_servers.StoreRoot("local", str(root), tmp_path)
    server = request.getfixturevalue(f"{request.param}_server")
    return store_servers.StoreRoot(request.param, server.new_root(), tmp_path, server)
