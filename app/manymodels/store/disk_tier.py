"""Node-local disk tier for artifacts downloaded from object storage.

Layout: ``<root>/<sha256>/<file name>`` (content-addressed, so a re-published version with new bytes
never reuses a stale copy) and ``<root>/.tmp/`` for downloads in flight (same filesystem, so the
final ``os.replace`` is atomic). Recency is the file's atime, set explicitly on every use, so the
disk itself is the index: a restarted process, or several processes sharing the folder, see the
same LRU order and budget.

Verification: a copy is hashed once. ``<root>/<sha256>/.verified`` records the inode, size and
mtime of the copy that hashed to ``<sha256>``; while the file still has them, a restarted process (or
another replica sharing the folder) trusts it without re-reading it. Any rewrite or replacement
changes them, and the file is hashed again before use.

Budget policy:
- before a download, older files are evicted to make room for the manifest's ``size_bytes``;
  after it, again until the folder is within ``capacity_bytes``;
- a file in use by a fetch in this process, or used less than ``protect_s`` ago, is never evicted:
  the caller is about to open the path it was just given. The budget is therefore soft by at most
  what was fetched in the last ``protect_s`` seconds;
- an artifact larger than the whole budget is still fetched and kept until the next eviction pass
  after its protection expires (refusing it would make that model unservable).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from manymodels.errors import ArtifactIntegrityError
from manymodels.store.hashing import copy_and_hash, mismatch_message, sha256_file
from manymodels.store.names import is_plain_filename

log = logging.getLogger(__name__)

_SHA256 = re.compile(r"[0-9a-f]{64}")
_TMP = ".tmp"
_RECORD = ".verified"  # dot-names are never artifact names (is_plain_filename)
_STALE_TMP_S = 3600.0  # older partial downloads belong to a dead process


@dataclass
class DiskTierStats:
    hits: int = 0
    misses: int = 0
    downloads: int = 0
    downloaded_bytes: int = 0
    evictions: int = 0
    evicted_bytes: int = 0


class DiskTier:
    def __init__(self, root: str | Path, capacity_bytes: int, *, protect_s: float = 10.0) -> None:
        if capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.root = Path(root)
        self.capacity_bytes = capacity_bytes
        self.protect_s = protect_s
        self._tmp = self.root / _TMP
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._mutex = threading.Lock()
        self._busy: dict[str, list] = {}  # sha256 -> [lock, users]; present only while in use
        # path -> (inode, size, mtime_ns) known verified (hashed, or read from its record); touching
        # sets atime only, so the key survives use.
        self._verified: dict[Path, tuple[int, int, int]] = {}
        self._stats = DiskTierStats()
        self._drop_stale_temp()

    def stats(self) -> dict[str, int]:
        with self._mutex:
            return asdict(self._stats)

    def get(
        self,
        sha256: str,
        filename: str,
        open_source: Callable[[], BinaryIO],
        *,
        label: str,
        size_bytes: int | None = None,
    ) -> Path:
        """Path of the verified local copy, downloading it from ``open_source()`` on a miss.

        Concurrent calls for the same sha256 share one download; different ones run in parallel.
        """
        if not _SHA256.fullmatch(sha256) or not is_plain_filename(filename):
            raise ArtifactIntegrityError(f"{label}: bad sha256 or artifact name for the disk tier")
        path = self.root / sha256 / filename
        with self._claim(sha256):
            if self._valid(path, sha256):
                self._count(hits=1)
            else:
                self._count(misses=1)
                self._evict(incoming=size_bytes or 0)
                self._download(path, sha256, open_source, label)
                self._evict(incoming=0)
            self._touch(path)
        return path

    def usage_bytes(self) -> int:
        return sum(size for _, size, _, _ in self._scan())

    # -- internals ----------------------------------------------------------------------------

    def _count(self, **deltas: int) -> None:
        with self._mutex:
            for name, delta in deltas.items():
                setattr(self._stats, name, getattr(self._stats, name) + delta)

    @contextlib.contextmanager
    def _claim(self, sha256: str) -> Iterator[None]:
        with self._mutex:
            entry = self._busy.setdefault(sha256, [threading.Lock(), 0])
            entry[1] += 1
        try:
            with entry[0]:
                yield
        finally:
            with self._mutex:
                entry[1] -= 1
                if entry[1] == 0:
                    del self._busy[sha256]

    def _valid(self, path: Path, sha256: str) -> bool:
        try:
            st = path.stat()
            key = (st.st_ino, st.st_size, st.st_mtime_ns)
            if self._verified.get(path) == key:
                return True
            if _read_record(path, sha256) == key:
                self._verified[path] = key
                return True
            digest, _ = sha256_file(path)
        except FileNotFoundError:  # evicted by another process sharing the folder
            return False
        if digest == sha256:
            self._remember(path, sha256, key)
            return True
        log.warning("disk tier: %s is corrupt (sha256 %s...), dropping it", path, digest[:12])
        _drop(path)
        return False

    def _remember(self, path: Path, sha256: str, key: tuple[int, int, int]) -> None:
        self._verified[path] = key
        record = {"file": path.name, "sha256": sha256, "inode": key[0], "size": key[1], "mtime_ns": key[2]}
        try:
            (path.parent / _RECORD).write_bytes(json.dumps(record).encode())
        except OSError as exc:  # a full or read-only disk only costs a re-hash after a restart
            log.warning("disk tier: cannot record the verification of %s: %s", path, exc)

    def _download(
        self, path: Path, sha256: str, open_source: Callable[[], BinaryIO], label: str
    ) -> None:
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix=sha256[:16] + "-", suffix=".part")
        tmp = Path(tmp_name)
        try:
            # No fsync: after a crash the copy is re-hashed before first use (empty memo).
            with os.fdopen(fd, "wb") as out, open_source() as src:
                digest, size = copy_and_hash(src, out)
            if digest != sha256:
                raise ArtifactIntegrityError(mismatch_message(label, sha256, digest))
            path.parent.mkdir(exist_ok=True)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        st = path.stat()
        self._remember(path, sha256, (st.st_ino, st.st_size, st.st_mtime_ns))
        self._count(downloads=1, downloaded_bytes=size)
        log.info("disk tier: downloaded %s (%d bytes)", label, size)

    def _touch(self, path: Path) -> None:
        # atime carries recency; mtime is kept so the verified-stat memo stays valid.
        with contextlib.suppress(FileNotFoundError):
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))

    def _scan(self) -> list[tuple[float, int, str, Path]]:
        """(atime, size, sha256, path) of every cached file."""
        entries = []
        with contextlib.suppress(FileNotFoundError), os.scandir(self.root) as top:
            for folder in top:
                if folder.name == _TMP or not folder.is_dir(follow_symlinks=False):
                    continue
                with contextlib.suppress(FileNotFoundError), os.scandir(folder.path) as files:
                    for f in files:
                        if not f.name.startswith(".") and f.is_file(follow_symlinks=False):
                            with contextlib.suppress(FileNotFoundError):
                                st = f.stat(follow_symlinks=False)
                                entries.append((st.st_atime, st.st_size, folder.name, Path(f.path)))
        return entries

    def _evict(self, incoming: int) -> None:
        entries = self._scan()
        total = sum(size for _, size, _, _ in entries)
        if total + incoming <= self.capacity_bytes:
            return
        now = time.time()
        freed = count = 0
        # Decisions under the mutex: a fetch registers its claim under the same mutex, so a file
        # is either seen busy here or already gone when that fetch checks it.
        with self._mutex:
            for atime, size, sha256, path in sorted(entries):
                if total + incoming <= self.capacity_bytes:
                    break
                if sha256 in self._busy or now - atime < self.protect_s:
                    continue
                _drop(path)
                self._verified.pop(path, None)
                total -= size
                freed += size
                count += 1
            self._stats.evictions += count
            self._stats.evicted_bytes += freed
        if total + incoming > self.capacity_bytes:
            log.info(
                "disk tier: %d bytes (+%d incoming) over the %d byte budget; the rest is in use",
                total,
                incoming,
                self.capacity_bytes,
            )

    def _drop_stale_temp(self) -> None:
        cutoff = time.time() - _STALE_TMP_S
        for part in self._tmp.glob("*.part"):
            with contextlib.suppress(FileNotFoundError):
                if part.stat().st_mtime < cutoff:
                    part.unlink()


def _read_record(path: Path, sha256: str) -> tuple[int, int, int] | None:
    """The (inode, size, mtime_ns) that ``path`` had when it hashed to ``sha256``, if recorded."""
    try:
        record = json.loads((path.parent / _RECORD).read_bytes())
        if record["file"] != path.name or record["sha256"] != sha256:
            return None
        return int(record["inode"]), int(record["size"]), int(record["mtime_ns"])
    except (OSError, ValueError, TypeError, KeyError):  # absent or torn: hash the file instead
        return None


def _drop(path: Path) -> None:
    """Delete a cached copy, its record and its folder (the record first: never trust a stale one)."""
    (path.parent / _RECORD).unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.parent.rmdir()
