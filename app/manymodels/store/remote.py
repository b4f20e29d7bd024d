"""A store in object storage (s3://, gs://, az://, ...) via fsspec, with a node-local disk tier."""

from __future__ import annotations

from pathlib import Path
from typing import Any, BinaryIO

import fsspec

from manymodels.errors import ArtifactIntegrityError
from manymodels.store.base import MANIFEST, MAX_METADATA_BYTES, ModelStore, label
from manymodels.store.disk_tier import DiskTier


class RemoteStore(ModelStore):
    """Artifacts are downloaded once per node into ``cache_dir`` (see DiskTier for the budget rules)
    and sha256-verified before they become visible there; manifests and listings are memoised."""

    def __init__(
        self,
        uri: str,
        *,
        cache_dir: str | Path,
        cache_bytes: int,
        storage_options: dict[str, Any] | None = None,
        protect_s: float = 10.0,
    ) -> None:
        super().__init__(uri.rstrip("/"))
        self.fs, root = fsspec.core.url_to_fs(uri, **(storage_options or {}))
        self._root = root.rstrip("/")
        self.disk = DiskTier(cache_dir, cache_bytes, protect_s=protect_s)

    def _path(self, *parts: str) -> str:
        return "/".join((self._root, *parts))

    def _scan_models(self) -> list[str]:
        try:
            entries = self.fs.ls(self._root or "/", detail=True)
        except FileNotFoundError:  # object stores have no empty "folders": no objects, no models
            return []
        return [
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries if e["type"] == "directory"
        ]

    def _scan_versions(self, model: str) -> list[str] | None:
        base = self._path(model) + "/"
        # one recursive listing instead of one existence check per version
        try:
            files = self.fs.find(self._path(model), maxdepth=2)
        except FileNotFoundError:
            files = []
        if not files and not self._has_model_dir(model):
            return None
        versions = []
        for name in files:
            rel = name[len(base) :].split("/") if name.startswith(base) else []
            if len(rel) == 2 and rel[1] == MANIFEST:
                versions.append(rel[0])
        return versions

    def _has_model_dir(self, model: str) -> bool:
        return self.fs.isdir(self._path(model))

    def _read_metadata(self, *parts: str) -> bytes | None:
        try:
            with self.fs.open(self._path(*parts), "rb") as f:
                return f.read(MAX_METADATA_BYTES + 1)
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            return None

    def fetch(self, model: str, version: str) -> Path:
        manifest = self.manifest(model, version)
        where = label(model, version)
        remote = self._path(model, version, manifest.artifact)

        def open_source() -> BinaryIO:
            try:
                return self.fs.open(remote, "rb")
            except FileNotFoundError:
                raise ArtifactIntegrityError(
                    f"{where}: artifact {manifest.artifact!r} is missing from {self.uri}"
                ) from None

        return self.disk.get(
            manifest.sha256,
            manifest.artifact,
            open_source,
            label=where,
            size_bytes=manifest.size_bytes,
        )

    def fork(self) -> RemoteStore:
        self.fs.invalidate_cache()  # see refresh()
        return super().fork()  # type: ignore[return-value]

    def refresh(self) -> None:
        super().refresh()
        # s3fs/gcsfs/adlfs keep their own directory listings with no expiry by default; without
        # this a refresh would not see new versions.
        self.fs.invalidate_cache()
