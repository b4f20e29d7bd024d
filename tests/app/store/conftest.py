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


@pytest.fixture
def mem_root() -> Iterator[str]:
    """A private prefix in fsspec's process-wide memory filesystem."""
    bucket = f"manymodels-test-{uuid.uuid4().hex}"
    yield f"memory://{bucket}/store"
    # MemoryFileSystem.rm is quadratic in the number of files; drop the prefix from its tables.
    fs = fsspec.filesystem("memory")
    top = f"/{bucket}"
    for key in [k for k in fs.store if k == top or k.startswith(top + "/")]:
        del fs.store[key]
    fs.pseudo_dirs[:] = [d for d in fs.pseudo_dirs if not (d == top or d.startswith(top + "/"))]
