from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import fsspec
import pytest

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
        root: str | Path, model: str, version: str, data: bytes | None = None,
        name: str = "model.onnx", **kwargs: object,
    ) -> ModelManifest:
        src = sources / uuid.uuid4().hex / name
        src.parent.mkdir()
        src.write_bytes(data if data is not None else f"{model}:{version}".encode() * 100)
        return publish_version(
            root, model, version, runtime="onnx", artifact=src,
            inputs=INPUTS, outputs=OUTPUTS, **kwargs,
        )

    return _publish


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    root.mkdir()
    return root


@pytest.fixture
def mem_root() -> Iterator[str]:
    """A private prefix in fsspec's process-wide memory filesystem."""
    uri = f"memory://manymodels-test-{uuid.uuid4().hex}/store"
    yield uri
    fs, path = fsspec.core.url_to_fs(uri)
    if fs.exists(path):
        fs.rm(path, recursive=True)
