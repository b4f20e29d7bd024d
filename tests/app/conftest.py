"""Fixtures shared by every app test package."""

from __future__ import annotations

import importlib.util
import uuid
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from manymodels.demo.catalog import build_demo_catalog


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local store root built by the demo generator; shared by the session, so don't modify it.

    Holds ``text-sentiment`` v1+v2 (aliases stable=1, canary=2; ``features`` [-1, 512] ->
    ``probabilities`` [-1, 2]), ``mlp-000`` ... ``mlp-005`` (``input`` [-1, 64] -> ``logits``
    [-1, 10]; ``mlp-000`` and ``mlp-004`` also have v2 and aliases stable=1, canary=2) and, when
    torch is installed, ``torch-mlp`` (torch_export) and ``torch-script`` (torchscript; outputs
    ``logits`` and ``probabilities``). Built once: importing torch takes a few seconds.
    """
    root = tmp_path_factory.mktemp("demo-catalog")
    with_torch = importlib.util.find_spec("torch") is not None
    build_demo_catalog(root, n_mlp=6, with_torch=with_torch, seed=0)
    return root


@pytest.fixture
def mem_root() -> Iterator[str]:
    """A private prefix in fsspec's process-wide memory filesystem, dropped afterwards."""
    bucket = f"manymodels-test-{uuid.uuid4().hex}"
    yield f"memory://{bucket}/store"
    # MemoryFileSystem.rm is quadratic in the number of files; drop the prefix from its tables.
    fs = fsspec.filesystem("memory")
    top = f"/{bucket}"
    for key in [k for k in fs.store if k == top or k.startswith(top + "/")]:
        del fs.store[key]
    fs.pseudo_dirs[:] = [d for d in fs.pseudo_dirs if not (d == top or d.startswith(top + "/"))]
