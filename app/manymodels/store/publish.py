"""Writing versions into a store: what the demo generator and CI use to publish models.

The manifest is written last, so a version being published stays invisible (listings skip
versions without a manifest) until its artifact is complete. Works on local paths and any fsspec
URI; on object stores each object appears atomically when its upload completes.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from manymodels.errors import InvalidName
from manymodels.store.base import ALIASES, MANIFEST
from manymodels.store.hashing import copy_and_hash
from manymodels.store.manifest import ModelManifest, TensorSpec
from manymodels.store.names import is_plain_filename, validate_name

_ZERO_SHA = "0" * 64


def publish_version(
    root: str | Path,
    model: str,
    version: str,
    *,
    runtime: str,
    artifact: str | Path,
    inputs: list[TensorSpec],
    outputs: list[TensorSpec],
    format: str = "onnx",
    description: str = "",
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
) -> ModelManifest:
    """Copy ``artifact`` to ``<root>/<model>/<version>/`` and write its manifest; return it.

    Published versions are immutable unless ``overwrite``: caches downstream trust them.
    """
    validate_name("model", model)
    validate_name("version", version)
    src = Path(artifact)
    if not is_plain_filename(src.name):
        raise InvalidName(f"artifact file name {src.name!r} is not a plain file name")
    # Validate every field before copying anything; hash and size are filled in after the copy.
    draft = ModelManifest(
        name=model,
        version=version,
        runtime=runtime,
        format=format,
        artifact=src.name,
        sha256=_ZERO_SHA,
        size_bytes=0,
        inputs=inputs,
        outputs=outputs,
        description=description,
    )
    fs, base = fsspec.core.url_to_fs(str(root), **(storage_options or {}))
    folder = "/".join((base.rstrip("/"), model, version))
    if not overwrite and fs.exists(f"{folder}/{MANIFEST}"):
        raise FileExistsError(f"model {model!r} version {version!r} is already published")
    fs.makedirs(folder, exist_ok=True)
    # Hash the bytes as they are copied, so the manifest describes exactly what was written.
    with open(src, "rb") as f:
        sha256, size = _write(fs, f"{folder}/{src.name}", f)
    manifest = draft.model_copy(update={"sha256": sha256, "size_bytes": size})
    _write_bytes(fs, f"{folder}/{MANIFEST}", manifest.model_dump_json(indent=2).encode())
    return manifest


def set_store_aliases(
    root: str | Path,
    model: str,
    aliases: dict[str, str],
    *,
    storage_options: dict[str, Any] | None = None,
) -> None:
    """Atomically replace ``<root>/<model>/aliases.json``."""
    validate_name("model", model)
    clean = {validate_name("alias", a): validate_name("version", v) for a, v in aliases.items()}
    fs, base = fsspec.core.url_to_fs(str(root), **(storage_options or {}))
    folder = "/".join((base.rstrip("/"), model))
    fs.makedirs(folder, exist_ok=True)
    _write_bytes(fs, f"{folder}/{ALIASES}", json.dumps(clean, indent=2, sort_keys=True).encode())


def _write(fs: fsspec.AbstractFileSystem, path: str, src: BinaryIO) -> tuple[str, int]:
    """Stream ``src`` to ``path`` so readers see the old file or the whole new one, never a part."""
    if not isinstance(fs, LocalFileSystem):
        with fs.open(path, "wb") as out:
            return copy_and_hash(src, out)
    tmp = f"{os.path.dirname(path)}/.{os.path.basename(path)}.{uuid.uuid4().hex}.tmp"
    try:
        with open(tmp, "wb") as out:
            result = copy_and_hash(src, out)
            out.flush()
            os.fsync(out.fileno())  # the rename must not land before the data does
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return result


def _write_bytes(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    _write(fs, path, io.BytesIO(data))
