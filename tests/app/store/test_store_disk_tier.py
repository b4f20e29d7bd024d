"""DiskTier verification: a copy is hashed once, across processes too, and hashed again once changed.

Hashing is counted by wrapping ``sha256_file`` (the only way the tier re-reads a cached copy);
downloads by counting ``open_source`` calls.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import pytest

from manymodels.store import disk_tier
from manymodels.store.disk_tier import DiskTier

DATA = b"weights" * 1000
SHA = hashlib.sha256(DATA).hexdigest()


class Counters:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.hashed: list[Path] = []
        self.downloads = 0
        real = disk_tier.sha256_file

        def counting(path: str | Path) -> tuple[str, int]:
            self.hashed.append(Path(path))
            return real(path)

        monkeypatch.setattr(disk_tier, "sha256_file", counting)

    def source(self) -> io.BytesIO:
        self.downloads += 1
        return io.BytesIO(DATA)


@pytest.fixture
def counters(monkeypatch: pytest.MonkeyPatch) -> Counters:
    return Counters(monkeypatch)


def fetch(tier: DiskTier, counters: Counters) -> Path:
    return tier.get(SHA, "model.onnx", counters.source, label="m:1", size_bytes=len(DATA))


def test_a_verified_copy_is_not_hashed_again(tmp_path: Path, counters: Counters) -> None:
    tier = DiskTier(tmp_path, 1 << 20)
    path = fetch(tier, counters)  # hashed while downloading, not by re-reading the file
    assert fetch(tier, counters) == path
    assert counters.hashed == [] and counters.downloads == 1


def test_a_restarted_process_trusts_the_record_of_an_unchanged_copy(
    tmp_path: Path, counters: Counters
) -> None:
    path = fetch(DiskTier(tmp_path, 1 << 20), counters)
    again = DiskTier(tmp_path, 1 << 20)  # empty memo: only the record on disk knows the copy
    assert fetch(again, counters) == path
    assert counters.hashed == [] and counters.downloads == 1
    assert again.stats()["hits"] == 1


def test_a_touched_copy_is_hashed_again_and_then_trusted(tmp_path: Path, counters: Counters) -> None:
    tier = DiskTier(tmp_path, 1 << 20)
    path = fetch(tier, counters)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fetch(tier, counters) == path  # same bytes: still valid, no download
    assert counters.hashed == [path] and counters.downloads == 1
    # the new mtime is recorded: a restarted process does not hash it again
    assert fetch(DiskTier(tmp_path, 1 << 20), counters) == path
    assert counters.hashed == [path]


def test_a_rewritten_copy_is_detected_and_downloaded_again(tmp_path: Path, counters: Counters) -> None:
    path = fetch(DiskTier(tmp_path, 1 << 20), counters)
    st = path.stat()
    path.write_bytes(b"x" * len(DATA))  # same inode, same size, only the mtime tells
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert fetch(DiskTier(tmp_path, 1 << 20), counters).read_bytes() == DATA
    assert counters.hashed == [path] and counters.downloads == 2


def test_a_replaced_copy_with_the_old_size_and_mtime_is_detected(tmp_path: Path, counters: Counters) -> None:
    path = fetch(DiskTier(tmp_path, 1 << 20), counters)
    st = path.stat()
    forged = tmp_path / "forged"
    forged.write_bytes(b"x" * len(DATA))
    os.utime(forged, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(forged, path)  # a new inode: the record no longer describes the file
    assert path.stat().st_mtime_ns == st.st_mtime_ns and path.stat().st_size == st.st_size
    tier = DiskTier(tmp_path, 1 << 20)
    assert fetch(tier, counters).read_bytes() == DATA
    assert counters.hashed == [path] and counters.downloads == 2


@pytest.mark.parametrize("record", ["torn {", '{"file": "other.onnx"}', "[]"])
def test_a_bad_or_foreign_record_means_hashing(tmp_path: Path, counters: Counters, record: str) -> None:
    path = fetch(DiskTier(tmp_path, 1 << 20), counters)
    (path.parent / ".verified").write_text(record)
    assert fetch(DiskTier(tmp_path, 1 << 20), counters) == path
    assert counters.hashed == [path] and counters.downloads == 1


def test_the_record_names_the_file_and_leaves_with_it(tmp_path: Path, counters: Counters) -> None:
    tier = DiskTier(tmp_path, len(DATA), protect_s=0.0)
    path = fetch(tier, counters)
    st = path.stat()
    record = json.loads((path.parent / ".verified").read_text())
    assert record == {
        "file": "model.onnx",
        "sha256": SHA,
        "inode": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
    }
    assert tier.usage_bytes() == len(DATA)  # the record is not an artifact
    other = b"other" * 10
    tier.get(hashlib.sha256(other).hexdigest(), "m.onnx", lambda: io.BytesIO(other), label="n:1")
    assert not path.parent.exists()  # evicted: file, record and folder
