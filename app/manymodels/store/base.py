"""The ModelStore interface and the listing/manifest memo every backend shares.

Backends only implement a few primitives (scan, read small file, fetch); validation, parsing and
memoisation live here so a local directory and an object store behave identically.
"""

from __future__ import annotations

import copy
import json
import threading
from abc import ABC, abstractmethod
from pathlib import Path

from pydantic import ValidationError

from manymodels.errors import ArtifactIntegrityError, ModelNotFound, VersionNotFound
from manymodels.store.manifest import ModelManifest
from manymodels.store.names import is_plain_filename, is_valid_name, sort_versions, validate_name

MANIFEST = "manifest.json"
ALIASES = "aliases.json"
# manifests and alias files are tiny; a cap stops a hostile or broken store from filling memory.
MAX_METADATA_BYTES = 1 << 20


def label(model: str, version: str) -> str:
    return f"model {model!r} version {version!r}"


class ModelStore(ABC):
    """Read-only view of ``<root>/<model>/<version>/{manifest.json,<artifact>}`` + aliases.json.

    Listings, aliases and manifests are memoised (10,000 models must not mean 10,000 stats per
    request); ``refresh()`` drops the memo so newly published versions and aliases show up.
    """

    uri: str

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._memo_lock = threading.Lock()
        self._models: tuple[list[str], frozenset[str]] | None = None
        self._versions: dict[str, list[str]] = {}
        self._aliases: dict[str, dict[str, str]] = {}
        self._manifests: dict[tuple[str, str], ModelManifest] = {}

    # -- backend primitives -------------------------------------------------------------------

    @abstractmethod
    def _scan_models(self) -> list[str]:
        """Names of the directories under the root (unfiltered)."""

    @abstractmethod
    def _scan_versions(self, model: str) -> list[str] | None:
        """Version directories of ``model`` that hold a manifest; None if the model is absent."""

    @abstractmethod
    def _has_model_dir(self, model: str) -> bool: ...

    @abstractmethod
    def _read_metadata(self, *parts: str) -> bytes | None:
        """Bytes of a small file under the root (at most MAX_METADATA_BYTES + 1); None if absent."""

    @abstractmethod
    def fetch(self, model: str, version: str) -> Path:
        """Local path of the artifact, sha256-verified against the manifest."""

    # -- shared behaviour ---------------------------------------------------------------------

    def _model_memo(self) -> tuple[list[str], frozenset[str]]:
        memo = self._models
        if memo is None:
            names = sorted(n for n in self._scan_models() if is_valid_name(n))
            memo = (names, frozenset(names))
            with self._memo_lock:
                self._models = memo
        return memo

    def list_models(self) -> list[str]:
        return list(self._model_memo()[0])

    def has_model(self, model: str) -> bool:
        """O(1) membership test against the memoised listing."""
        return model in self._model_memo()[1]

    def memoised(self, model: str, ref: str | None) -> bool:
        """Whether resolving ``model``/``ref`` (Catalog.resolve) needs no store round trip, so that it
        may run on an event loop; False means: resolve it in a thread."""
        memo = self._models
        if memo is None:
            return False
        if model not in memo[1]:
            return True  # refused from the memo
        versions = self._versions.get(model)
        if versions is None:
            return False
        return (ref is not None and ref in versions) or model in self._aliases

    def list_versions(self, model: str) -> list[str]:
        validate_name("model", model)
        versions = self._versions.get(model)
        if versions is None:
            found = self._scan_versions(model)
            if found is None:
                raise ModelNotFound(f"model {model!r} not found in store {self.uri}")
            versions = sort_versions(v for v in found if is_valid_name(v))
            with self._memo_lock:
                self._versions[model] = versions
        return list(versions)

    def store_aliases(self, model: str) -> dict[str, str]:
        validate_name("model", model)
        aliases = self._aliases.get(model)
        if aliases is None:
            raw = self._read_metadata(model, ALIASES)
            aliases = {} if raw is None else _parse_aliases(raw, model)
            with self._memo_lock:
                self._aliases[model] = aliases
        return dict(aliases)

    def manifest(self, model: str, version: str) -> ModelManifest:
        validate_name("model", model)
        validate_name("version", version)
        found = self._manifests.get((model, version))
        if found is not None:
            return found
        raw = self._read_metadata(model, version, MANIFEST)
        if raw is None:
            if not self._has_model_dir(model):
                raise ModelNotFound(f"model {model!r} not found in store {self.uri}")
            raise VersionNotFound(f"model {model!r} has no published version {version!r}")
        found = parse_manifest(raw, model, version)
        with self._memo_lock:
            self._manifests[(model, version)] = found
        return found

    def fork(self) -> ModelStore:
        """A view of the same store (same connection, same disk tier) with an empty memo: what the
        store holds now, prepared beside the live view and swapped in once its new versions are
        warm. Backends drop their own listing caches here too."""
        view = copy.copy(self)
        view._memo_lock = threading.Lock()
        view._models, view._versions, view._aliases, view._manifests = None, {}, {}, {}
        return view

    def refresh(self) -> None:
        """Drop the memo in place (the next call lists the store again)."""
        with self._memo_lock:
            self._models = None
            self._versions = {}
            self._aliases = {}
            self._manifests = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri!r})"


def parse_manifest(raw: bytes, model: str, version: str) -> ModelManifest:
    """Parse and cross-check a manifest; every defect is an ArtifactIntegrityError."""
    where = label(model, version)
    if len(raw) > MAX_METADATA_BYTES:
        raise ArtifactIntegrityError(f"{where}: manifest.json is larger than {MAX_METADATA_BYTES}")
    try:
        manifest = ModelManifest.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<root>"
        raise ArtifactIntegrityError(
            f"{where}: manifest.json is invalid ({exc.error_count()} errors; {loc}: {first['msg']})"
        ) from None
    if manifest.name != model or manifest.version != version:
        raise ArtifactIntegrityError(
            f"{where}: manifest.json names model {manifest.name!r} version {manifest.version!r}"
        )
    if not is_plain_filename(manifest.artifact):
        raise ArtifactIntegrityError(
            f"{where}: artifact {manifest.artifact!r} is not a plain file name"
        )
    return manifest


def _parse_aliases(raw: bytes, model: str) -> dict[str, str]:
    # A broken aliases.json fails loudly: silently ignoring it would serve the wrong version.
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if (
        len(raw) > MAX_METADATA_BYTES
        or not isinstance(data, dict)
        or not all(is_valid_name(k) and is_valid_name(v) for k, v in data.items())
    ):
        raise ArtifactIntegrityError(
            f"aliases.json of model {model!r} must map alias names to version names"
        )
    return dict(data)
