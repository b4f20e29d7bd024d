"""A store on a local directory or a mounted volume (PVC): artifacts are read in place."""

from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path

from manymodels.errors import ArtifactIntegrityError
from manymodels.store.base import MANIFEST, MAX_METADATA_BYTES, ModelStore, label
from manymodels.store.hashing import mismatch_message, sha256_file
from manymodels.store.names import is_valid_name

log = logging.getLogger(__name__)

_StatKey = tuple[int, int, int, int, int]


def _stat_key(st: os.stat_result) -> _StatKey:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class LocalStore(ModelStore):
    """Symlinks are allowed only while they resolve inside the root (volume tooling uses them);
    a link that leaves the root is skipped in listings and refused on access."""

    def __init__(self, root: str | Path) -> None:
        path = Path(root).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"store root {str(path)!r} is not a directory")
        self.root = path.resolve()
        super().__init__(str(self.root))
        # (model, version, artifact) -> (resolved path, sha256, stat key) of artifacts already hashed:
        # a reload neither hashes nor resolves the path again while the file at the unresolved path is
        # that very file; a rewrite or a moved symlink changes device/inode/size/mtime/ctime.
        self._verified: dict[tuple[str, str, str], tuple[Path, str, _StatKey]] = {}
        self._verified_lock = threading.Lock()

    def _inside(self, *parts: str) -> Path:
        resolved = self.root.joinpath(*parts).resolve()
        if not resolved.is_relative_to(self.root):
            raise ArtifactIntegrityError(f"{'/'.join(parts)!r} resolves outside the store root")
        return resolved

    def _dir_entries(self, directory: Path) -> list[os.DirEntry[str]]:
        """Subdirectories with valid names whose symlinks (if any) stay inside the root."""
        found = []
        try:
            with os.scandir(directory) as it:
                for entry in it:
                    if not is_valid_name(entry.name) or not entry.is_dir():
                        continue
                    if entry.is_symlink() and not Path(entry.path).resolve().is_relative_to(
                        self.root
                    ):
                        log.warning("store: skipping %s, it links outside the root", entry.path)
                        continue
                    found.append(entry)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return found

    def _scan_models(self) -> list[str]:
        return [entry.name for entry in self._dir_entries(self.root)]

    def _scan_versions(self, model: str) -> list[str] | None:
        directory = self._inside(model)
        if not directory.is_dir():
            return None
        return [
            entry.name
            for entry in self._dir_entries(directory)
            if os.path.isfile(os.path.join(entry.path, MANIFEST))
        ]

    def _has_model_dir(self, model: str) -> bool:
        return self._inside(model).is_dir()

    def _read_metadata(self, *parts: str) -> bytes | None:
        try:
            with open(self._inside(*parts), "rb") as f:
                return f.read(MAX_METADATA_BYTES + 1)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None

    def fetch(self, model: str, version: str) -> Path:
        manifest = self.manifest(model, version)
        entry = (model, version, manifest.artifact)
        known = self._verified.get(entry)
        if known is not None and known[1] == manifest.sha256:
            try:
                unchanged = _stat_key(os.stat(os.path.join(self.root, *entry))) == known[2]
            except OSError:
                unchanged = False
            if unchanged:
                return known[0]
        where = label(model, version)
        path = self._inside(*entry)
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ArtifactIntegrityError(
                f"{where}: artifact {manifest.artifact!r} is missing"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise ArtifactIntegrityError(f"{where}: artifact {manifest.artifact!r} is not a file")
        digest, _ = sha256_file(path)
        if digest != manifest.sha256:
            raise ArtifactIntegrityError(mismatch_message(where, manifest.sha256, digest))
        with self._verified_lock:
            self._verified[entry] = (path, manifest.sha256, _stat_key(st))
        return path

    def refresh(self) -> None:
        super().refresh()
        with self._verified_lock:
            self._verified = {}
