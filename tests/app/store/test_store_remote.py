import hashlib
import os
import threading
import time
from pathlib import Path

import fsspec
import pytest

from manymodels.errors import ArtifactIntegrityError, ModelNotFound, VersionNotFound
from manymodels.store import Catalog, RemoteStore, open_store, set_store_aliases

KIB = 1024


class OpenCounter:
    """Wraps ``fs.open`` and counts reads of artifact files (manifests are not counted)."""

    def __init__(self, fs: fsspec.AbstractFileSystem, delay_s: float = 0.0) -> None:
        self.real_open = fs.open
        self.delay_s = delay_s
        self.opened: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, path: str, mode: str = "rb", **kwargs: object):
        if not path.endswith((".json", "/")):
            with self.lock:
                self.opened.append(path.rsplit("/", 3)[-3])  # the model name
            time.sleep(self.delay_s)
        return self.real_open(path, mode, **kwargs)


def _remote(uri: str, tmp_path: Path, cache_bytes: int = 10 * 2**20, **kw) -> RemoteStore:
    return RemoteStore(uri, cache_dir=tmp_path / "tier", cache_bytes=cache_bytes, **kw)


def test_memory_store_lists_fetches_and_verifies(mem_root: str, tmp_path: Path, publish) -> None:
    data = os.urandom(100 * KIB)
    publish(mem_root, "m", "2", data=data)
    publish(mem_root, "m", "10")
    publish(mem_root, "n", "1")
    fs, base = fsspec.core.url_to_fs(mem_root)
    fs.pipe_file(f"{base}/m/11/model.onnx", b"half published")
    store = _remote(mem_root, tmp_path)
    assert store.list_models() == ["m", "n"]
    assert store.list_versions("m") == ["2", "10"]
    path = store.fetch("m", "2")
    assert path.is_relative_to(tmp_path / "tier") and path.read_bytes() == data
    assert path.parent.name == hashlib.sha256(data).hexdigest()
    with pytest.raises(ModelNotFound, match="'zz'"):
        store.list_versions("zz")
    with pytest.raises(VersionNotFound, match="'11'"):
        store.manifest("m", "11")


def test_corrupted_remote_artifact_leaves_nothing_behind(
    mem_root: str, tmp_path: Path, publish
) -> None:
    manifest = publish(mem_root, "m", "1", data=b"good" * 1000)
    fs, base = fsspec.core.url_to_fs(mem_root)
    fs.pipe_file(f"{base}/m/1/model.onnx", b"evil" * 1000)
    store = _remote(mem_root, tmp_path)
    with pytest.raises(ArtifactIntegrityError) as info:
        store.fetch("m", "1")
    assert manifest.sha256[:12] in str(info.value)
    assert hashlib.sha256(b"evil" * 1000).hexdigest()[:12] in str(info.value)
    assert "'m'" in str(info.value) and "'1'" in str(info.value)
    assert store.disk.usage_bytes() == 0
    assert list((tmp_path / "tier" / ".tmp").iterdir()) == []
    fs.rm(f"{base}/m/1/model.onnx")
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        store.fetch("m", "1")


def test_second_fetch_reuses_the_disk_copy(
    mem_root: str, tmp_path: Path, publish, monkeypatch
) -> None:
    publish(mem_root, "m", "1")
    store = _remote(mem_root, tmp_path)
    counter = OpenCounter(store.fs)
    monkeypatch.setattr(store.fs, "open", counter)
    first = store.fetch("m", "1")
    second = store.fetch("m", "1")
    assert first == second and counter.opened == ["m"]
    # a fresh process (new store, empty memo) on the same folder re-verifies instead of downloading
    again = _remote(mem_root, tmp_path)
    monkeypatch.setattr(again.fs, "open", counter)
    assert again.fetch("m", "1") == first and counter.opened == ["m"]
    # ... and a corrupted disk copy is detected and replaced by a fresh download
    first.write_bytes(b"rotted")
    third = _remote(mem_root, tmp_path)
    assert third.fetch("m", "1").read_bytes() == b"m:1" * 100
    assert counter.opened == ["m", "m"]
    assert third.disk.stats()["downloads"] == 1 and again.disk.stats()["hits"] == 1


def test_budget_evicts_least_recently_used(mem_root: str, tmp_path: Path, publish) -> None:
    for name in "abcd":
        publish(mem_root, name, "1", data=name.encode() * (40 * KIB))
    store = _remote(mem_root, tmp_path, cache_bytes=100 * KIB, protect_s=0.0)
    a = store.fetch("a", "1")
    time.sleep(0.01)
    b = store.fetch("b", "1")
    time.sleep(0.01)
    store.fetch("a", "1")  # a is now more recent than b
    time.sleep(0.01)
    c = store.fetch("c", "1")
    assert a.exists() and c.exists() and not b.exists()
    assert store.disk.usage_bytes() <= 100 * KIB
    stats = store.disk.stats()
    assert stats["evictions"] == 1 and stats["evicted_bytes"] == 40 * KIB
    assert stats["downloads"] == 3 and stats["hits"] == 1


def test_oversized_artifact_is_fetched_then_evicted_later(
    mem_root: str, tmp_path: Path, publish
) -> None:
    publish(mem_root, "big", "1", data=b"B" * (200 * KIB))
    publish(mem_root, "small", "1", data=b"s" * KIB)
    store = _remote(mem_root, tmp_path, cache_bytes=100 * KIB, protect_s=0.0)
    big = store.fetch("big", "1")
    assert big.stat().st_size == 200 * KIB
    small = store.fetch("small", "1")
    assert small.exists() and not big.exists()


def test_recently_fetched_files_are_protected(mem_root: str, tmp_path: Path, publish) -> None:
    for name in "ab":
        publish(mem_root, name, "1", data=name.encode() * (80 * KIB))
    store = _remote(mem_root, tmp_path, cache_bytes=100 * KIB, protect_s=60.0)
    a = store.fetch("a", "1")
    b = store.fetch("b", "1")
    # a caller may be about to open `a`: the budget bends rather than pulling it away
    assert a.exists() and b.exists()


def test_concurrent_fetches_of_one_artifact_download_once(
    mem_root: str, tmp_path: Path, publish, monkeypatch
) -> None:
    publish(mem_root, "m", "1", data=os.urandom(300 * KIB))
    store = _remote(mem_root, tmp_path)
    counter = OpenCounter(store.fs, delay_s=0.2)
    monkeypatch.setattr(store.fs, "open", counter)
    barrier = threading.Barrier(8)
    paths: list[Path] = []

    def worker() -> None:
        barrier.wait()
        paths.append(store.fetch("m", "1"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(paths) == 8 and len(set(paths)) == 1
    assert counter.opened == ["m"]


def test_different_artifacts_download_in_parallel(
    mem_root: str, tmp_path: Path, publish, monkeypatch
) -> None:
    publish(mem_root, "a", "1")
    publish(mem_root, "b", "1")
    store = _remote(mem_root, tmp_path)
    both_inside = threading.Barrier(2, timeout=5)
    real_open = store.fs.open

    def meeting_open(path: str, mode: str = "rb", **kwargs: object):
        if path.endswith(".onnx"):
            both_inside.wait()  # breaks (and fails the fetch) if downloads are serialised
        return real_open(path, mode, **kwargs)

    monkeypatch.setattr(store.fs, "open", meeting_open)
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            store.fetch(name, "1")
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in "ab"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_file_uri_with_cache_dir_uses_the_disk_tier(tmp_path: Path, store_root: Path, publish):
    publish(store_root, "m", "1", data=b"x" * 5000)
    publish(store_root, "m", "2", data=b"y" * 5000)
    set_store_aliases(store_root, "m", {"stable": "1"})
    store = open_store(store_root.as_uri(), cache_dir=tmp_path / "tier", cache_bytes=2**20)
    assert isinstance(store, RemoteStore)
    catalog = Catalog(store)
    assert catalog.resolve("m") == "1"
    path = store.fetch("m", catalog.resolve("m", "2"))
    assert path.is_relative_to(tmp_path / "tier") and path.read_bytes() == b"y" * 5000
    publish(store_root, "m", "3")
    assert store.list_versions("m") == ["1", "2"]
    store.refresh()
    assert store.list_versions("m") == ["1", "2", "3"]


def test_open_store_defaults_the_disk_tier_under_tmpdir(
    mem_root: str, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # gettempdir() caches $TMPDIR
    store = open_store(mem_root)
    assert isinstance(store, RemoteStore)
    assert store.disk.root.parent == tmp_path / "manymodels-disk"
    assert store.list_models() == []


def test_ten_thousand_models_list_once_and_fast(mem_root: str, tmp_path: Path, monkeypatch):
    fs, base = fsspec.core.url_to_fs(mem_root)
    for i in range(10_000):
        fs.pipe_file(f"{base}/model-{i:05d}/1/manifest.json", b"{}")
    store = _remote(mem_root, tmp_path)
    listings: list[str] = []
    real_ls = store.fs.ls

    def counting_ls(path: str, **kwargs: object):
        listings.append(path)
        return real_ls(path, **kwargs)

    monkeypatch.setattr(store.fs, "ls", counting_ls)
    catalog = Catalog(store)
    start = time.perf_counter()
    assert len(catalog.models()) == 10_000
    for i in range(0, 10_000, 10):
        assert store.has_model(f"model-{i:05d}")
    assert catalog.resolve("model-00042") == "1"
    assert len(listings) == 1
    # generous bound: the memoised path must not rescan (a rescan per call would take minutes)
    assert time.perf_counter() - start < 5.0
