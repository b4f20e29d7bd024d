import hashlib
import json
import os
from pathlib import Path

import pytest

from manymodels.errors import ArtifactIntegrityError, InvalidName, ModelNotFound, VersionNotFound
from manymodels.store import LocalStore, open_store
from manymodels.store import local as local_module


def test_publish_then_list_manifest_and_fetch(store_root: Path, publish) -> None:
    data = b"\x01\x02" * 5000
    published = publish(store_root, "iris", "1", data=data, description="demo")
    publish(store_root, "mnist", "3")
    store = LocalStore(store_root)
    assert store.list_models() == ["iris", "mnist"]
    assert store.list_versions("iris") == ["1"]
    manifest = store.manifest("iris", "1")
    assert manifest == published
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.size_bytes == len(data)
    assert manifest.description == "demo"
    path = store.fetch("iris", "1")
    assert path == (store_root / "iris" / "1" / "model.onnx").resolve()
    assert path.read_bytes() == data


def test_versions_sort_numerically(store_root: Path, publish) -> None:
    for v in ["10", "2", "1", "9"]:
        publish(store_root, "m", v)
    assert LocalStore(store_root).list_versions("m") == ["1", "2", "9", "10"]


def test_half_published_and_junk_entries_are_invisible(store_root: Path, publish) -> None:
    publish(store_root, "m", "1")
    (store_root / "m" / "2").mkdir()
    (store_root / "m" / "2" / "model.onnx").write_bytes(b"partial")  # no manifest yet
    (store_root / "m" / ".tmp").mkdir()
    (store_root / ".cache").mkdir()
    (store_root / "README.md").write_text("not a model")
    store = LocalStore(store_root)
    assert store.list_models() == ["m"]
    assert store.list_versions("m") == ["1"]
    with pytest.raises(VersionNotFound, match="'2'"):
        store.manifest("m", "2")


def test_listings_are_memoised_until_refresh(store_root: Path, publish) -> None:
    publish(store_root, "m", "1")
    store = LocalStore(store_root)
    assert store.list_versions("m") == ["1"]
    assert store.list_models() == ["m"]
    assert store.store_aliases("m") == {}
    publish(store_root, "m", "2")
    publish(store_root, "n", "1")
    (store_root / "m" / "aliases.json").write_text('{"stable": "1"}')
    assert store.list_versions("m") == ["1"]
    assert store.list_models() == ["m"]
    assert store.store_aliases("m") == {}
    store.refresh()
    assert store.list_versions("m") == ["1", "2"]
    assert store.list_models() == ["m", "n"]
    assert store.store_aliases("m") == {"stable": "1"}


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "..", "/etc", "m/../../x"])
def test_traversal_names_are_rejected_everywhere(store_root: Path, publish, bad: str) -> None:
    publish(store_root, "m", "1")
    store = LocalStore(store_root)
    for call in (
        lambda: store.list_versions(bad),
        lambda: store.manifest(bad, "1"),
        lambda: store.manifest("m", bad),
        lambda: store.fetch("m", bad),
        lambda: store.store_aliases(bad),
        lambda: publish(store_root, bad, "1"),
        lambda: publish(store_root, "m", bad),
    ):
        with pytest.raises(InvalidName):
            call()


def test_symlinks_leaving_the_root_are_refused(tmp_path: Path, store_root: Path, publish) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    publish(outside, "evil", "1")
    publish(store_root, "m", "1", data=b"same bytes")
    (store_root / "evil").symlink_to(outside / "evil")
    store = LocalStore(store_root)
    assert store.list_models() == ["m"]
    with pytest.raises(ArtifactIntegrityError, match="outside"):
        store.manifest("evil", "1")
    with pytest.raises(ArtifactIntegrityError, match="outside"):
        store.list_versions("evil")

    artifact = store_root / "m" / "1" / "model.onnx"
    inside = store_root / "m" / "shared.bin"
    inside.write_bytes(b"same bytes")
    artifact.unlink()
    artifact.symlink_to(inside)  # a link that stays inside the root is fine
    assert store.fetch("m", "1") == inside.resolve()

    secret = outside / "secret.bin"
    secret.write_bytes(b"same bytes")
    artifact.unlink()
    artifact.symlink_to(secret)
    with pytest.raises(ArtifactIntegrityError, match="outside"):
        store.fetch("m", "1")


def test_corrupted_artifact_is_refused(store_root: Path, publish) -> None:
    manifest = publish(store_root, "m", "1", data=b"good" * 1000)
    (store_root / "m" / "1" / "model.onnx").write_bytes(b"evil" * 1000)
    with pytest.raises(ArtifactIntegrityError) as info:
        LocalStore(store_root).fetch("m", "1")
    message = str(info.value)
    actual = hashlib.sha256(b"evil" * 1000).hexdigest()
    assert "'m'" in message and "'1'" in message
    assert manifest.sha256[:12] in message and actual[:12] in message


def test_rewrite_after_verification_is_caught(store_root: Path, publish) -> None:
    publish(store_root, "m", "1", data=b"a" * 100)
    store = LocalStore(store_root)
    assert store.fetch("m", "1").read_bytes() == b"a" * 100
    artifact = store_root / "m" / "1" / "model.onnx"
    artifact.write_bytes(b"b" * 100)  # same size; the memoised verification must not hide it
    with pytest.raises(ArtifactIntegrityError, match="mismatch"):
        store.fetch("m", "1")


def test_missing_artifact(store_root: Path, publish) -> None:
    publish(store_root, "m", "1")
    (store_root / "m" / "1" / "model.onnx").unlink()
    with pytest.raises(ArtifactIntegrityError, match="missing"):
        LocalStore(store_root).fetch("m", "1")


def _rewrite_manifest(store_root: Path, **changes: object) -> None:
    path = store_root / "m" / "1" / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"name": "other"}, "names model 'other'"),
        ({"version": "2"}, "version '2'"),
        ({"artifact": "../../etc/passwd"}, "plain file name"),
        ({"artifact": "sub/model.onnx"}, "plain file name"),
        ({"sha256": "xyz"}, "sha256"),
        ({"runtime": "pickle"}, "runtime"),
        ({"extra": 1}, "extra"),
    ],
)
def test_bad_manifests_are_integrity_errors(
    store_root: Path, publish, changes: dict, match: str
) -> None:
    publish(store_root, "m", "1")
    _rewrite_manifest(store_root, **changes)
    with pytest.raises(ArtifactIntegrityError, match=match):
        LocalStore(store_root).manifest("m", "1")


def test_unparseable_manifest_and_aliases(store_root: Path, publish) -> None:
    publish(store_root, "m", "1")
    (store_root / "m" / "1" / "manifest.json").write_text("{not json")
    (store_root / "m" / "aliases.json").write_text('{"stable": "../1"}')
    store = LocalStore(store_root)
    with pytest.raises(ArtifactIntegrityError, match="manifest.json is invalid"):
        store.manifest("m", "1")
    with pytest.raises(ArtifactIntegrityError, match="aliases.json of model 'm'"):
        store.store_aliases("m")


def test_not_found_messages_name_the_missing_thing(store_root: Path, publish) -> None:
    publish(store_root, "m", "1")
    store = LocalStore(store_root)
    with pytest.raises(ModelNotFound, match="model 'nope' not found") as info:
        store.manifest("nope", "1")
    assert not isinstance(info.value, VersionNotFound)
    with pytest.raises(ModelNotFound, match="'nope'"):
        store.list_versions("nope")
    with pytest.raises(VersionNotFound, match="model 'm' has no published version '7'"):
        store.fetch("m", "7")


def test_open_store_picks_local_for_paths(store_root: Path, publish) -> None:
    publish(store_root, "m", "1")
    for uri in (str(store_root), store_root.as_uri()):
        store = open_store(uri)
        assert isinstance(store, LocalStore)
        assert store.list_versions("m") == ["1"]
    with pytest.raises(FileNotFoundError):
        LocalStore(store_root / "missing")
    with pytest.raises(ValueError, match="absolute path"):
        open_store("file://models")


def test_listing_is_scanned_once_until_refresh(store_root: Path, monkeypatch) -> None:
    for i in range(300):
        os.mkdir(store_root / f"model-{i:05d}")
    store = LocalStore(store_root)
    scans = []
    real_scan = store._scan_models
    monkeypatch.setattr(store, "_scan_models", lambda: scans.append(1) or real_scan())
    assert len(store.list_models()) == 300
    os.mkdir(store_root / "late")
    for i in range(0, 300, 7):
        assert store.has_model(f"model-{i:05d}")
    assert not store.has_model("late")
    assert len(scans) == 1
    store.refresh()
    assert store.has_model("late") and len(scans) == 2


@pytest.fixture
def hashed(monkeypatch) -> list[Path]:
    """Paths the local store hashes (its only way to re-read an artifact), in order."""
    calls: list[Path] = []
    real = local_module.sha256_file

    def counting(path: str | Path) -> tuple[str, int]:
        calls.append(Path(path))
        return real(path)

    monkeypatch.setattr(local_module, "sha256_file", counting)
    return calls


def test_an_unchanged_artifact_is_hashed_once(store_root: Path, publish, hashed: list[Path]) -> None:
    publish(store_root, "m", "1")
    store = LocalStore(store_root)
    path = store.fetch("m", "1")
    assert store.fetch("m", "1") == path
    assert store.fork().fetch("m", "1") == path  # the view a store refresh swaps in shares the memo
    assert hashed == [path]


def test_a_touched_artifact_is_hashed_again(store_root: Path, publish, hashed: list[Path]) -> None:
    publish(store_root, "m", "1")
    store = LocalStore(store_root)
    path = store.fetch("m", "1")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert store.fetch("m", "1") == path  # same bytes: still valid
    assert store.fetch("m", "1") == path
    assert hashed == [path, path]


def test_a_replaced_artifact_with_the_old_size_and_mtime_is_caught(
    store_root: Path, publish, hashed: list[Path]
) -> None:
    publish(store_root, "m", "1", data=b"a" * 100)
    store = LocalStore(store_root)
    path = store.fetch("m", "1")
    st = path.stat()
    forged = store_root / "forged"
    forged.write_bytes(b"b" * 100)
    os.utime(forged, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(forged, path)  # a new inode: the memo no longer describes the file
    with pytest.raises(ArtifactIntegrityError, match="mismatch"):
        store.fetch("m", "1")
    assert hashed == [path, path]


def test_a_moved_link_is_resolved_and_verified_again(store_root: Path, publish, hashed: list[Path]) -> None:
    publish(store_root, "m", "1", data=b"same bytes")
    artifact = store_root / "m" / "1" / "model.onnx"
    first, second = store_root / "m" / "a.bin", store_root / "m" / "b.bin"
    for target in (first, second):
        target.write_bytes(b"same bytes")
    artifact.unlink()
    artifact.symlink_to(first)
    store = LocalStore(store_root)
    assert store.fetch("m", "1") == first.resolve()
    assert store.fetch("m", "1") == first.resolve()  # the memo answers: no hash, no path walk
    artifact.unlink()
    artifact.symlink_to(second)
    assert store.fetch("m", "1") == second.resolve()  # another file behind the same name
    assert hashed == [first.resolve(), second.resolve()]
