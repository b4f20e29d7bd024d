from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import store_servers

from manymodels.store import ModelManifest

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
        data = data if data is not None else f"{model}:{version}".encode() * 100
        return store_servers.publish_file(root, model, version, data, sources, name=name, **kwargs)

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
