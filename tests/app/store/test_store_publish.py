import hashlib
import json
from pathlib import Path

import fsspec
import pytest

from manymodels.errors import InvalidName
from manymodels.store import LocalStore, publish_version, set_store_aliases
from manymodels.store.manifest import TensorSpec

SPEC = [TensorSpec(name="x", dtype="float32", shape=[-1, 3])]


def test_manifest_is_written_last_and_matches_the_copy(store_root: Path, tmp_path: Path) -> None:
    src = tmp_path / "net.pt"
    data = b"torch" * 300_000  # > 1 MiB: several hashing chunks
    src.write_bytes(data)
    manifest = publish_version(
        store_root,
        "m",
        "1",
        runtime="torch",
        format="torch_export",
        artifact=src,
        inputs=SPEC,
        outputs=SPEC,
        description="d",
    )
    folder = store_root / "m" / "1"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "net.pt"]
    assert (folder / "net.pt").read_bytes() == data
    assert manifest.sha256 == hashlib.sha256(data).hexdigest()
    assert manifest.size_bytes == len(data)
    on_disk = json.loads((folder / "manifest.json").read_text())
    assert on_disk["artifact"] == "net.pt" and on_disk["format"] == "torch_export"
    assert LocalStore(store_root).manifest("m", "1") == manifest


def test_published_versions_are_immutable_unless_overwrite(store_root: Path, publish) -> None:
    publish(store_root, "m", "1", data=b"one")
    with pytest.raises(FileExistsError, match="already published"):
        publish(store_root, "m", "1", data=b"two")
    manifest = publish(store_root, "m", "1", data=b"two", overwrite=True)
    assert LocalStore(store_root).fetch("m", "1").read_bytes() == b"two"
    assert manifest.sha256 == hashlib.sha256(b"two").hexdigest()


def test_invalid_fields_write_nothing(store_root: Path, tmp_path: Path) -> None:
    src = tmp_path / "model.onnx"
    src.write_bytes(b"x")
    with pytest.raises(ValueError, match="runtime"):
        publish_version(
            store_root, "m", "1", runtime="pickle", artifact=src, inputs=SPEC, outputs=SPEC
        )
    hidden = tmp_path / ".model.onnx"
    hidden.write_bytes(b"x")
    with pytest.raises(InvalidName, match="artifact"):
        publish_version(
            store_root, "m", "1", runtime="onnx", artifact=hidden, inputs=SPEC, outputs=SPEC
        )
    assert list(store_root.iterdir()) == []


def test_store_aliases_roundtrip_and_validation(store_root: Path, publish) -> None:
    publish(store_root, "m", "1")
    set_store_aliases(store_root, "m", {"stable": "1", "canary": "2"})
    assert LocalStore(store_root).store_aliases("m") == {"stable": "1", "canary": "2"}
    with pytest.raises(InvalidName):
        set_store_aliases(store_root, "m", {"stable": "../1"})
    with pytest.raises(InvalidName):
        set_store_aliases(store_root, "m", {"a/b": "1"})
    assert sorted(p.name for p in (store_root / "m").iterdir()) == ["1", "aliases.json"]


def test_publish_to_an_object_store_uri(mem_root: str, publish) -> None:
    manifest = publish(mem_root, "m", "1", data=b"bytes")
    set_store_aliases(mem_root, "m", {"stable": "1"})
    fs, base = fsspec.core.url_to_fs(mem_root)
    assert fs.cat_file(f"{base}/m/1/model.onnx") == b"bytes"
    assert json.loads(fs.cat_file(f"{base}/m/1/manifest.json"))["sha256"] == manifest.sha256
    assert json.loads(fs.cat_file(f"{base}/m/aliases.json")) == {"stable": "1"}
