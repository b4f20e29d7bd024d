"""``python -m manymodels sync`` on every backend (conftest.py's ``backend``: a local directory and the
S3, Azure Blob and GCS servers), both ways: the bucket -> PVC copy the chart's catalog loader makes,
and a local catalog pushed into the bucket. tests/app/test_cli_sync.py covers the command itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from store_servers import StoreRoot

from manymodels.cli import main
from manymodels.store import Catalog, open_store


def _catalog(root: str, tmp: Path, options: dict | None = None) -> Catalog:
    return Catalog(open_store(root, cache_dir=tmp if "://" in root else None, storage_options=options))


def test_sync_from_and_to_each_backend(
    backend: StoreRoot, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifests = {(m, v): backend.publish(m, v) for m, v in [("a", "1"), ("a", "2"), ("b", "1")]}
    backend.set_aliases("a", {"stable": "1", "canary": "2"})
    options = ["--storage-options", json.dumps(backend.storage_options or {})]
    pvc = tmp_path / "pvc"
    assert main(["sync", backend.root, str(pvc), *options]) == 0
    assert ": 3 copied, 0 already present, 0 failed; aliases of 1 model(s)" in capsys.readouterr().out
    if backend.remote:  # one download per artifact
        assert backend.gets() == 3
    local = _catalog(str(pvc), tmp_path / "t1")
    assert local.aliases("a") == {"stable": "1", "canary": "2"}
    source = backend.open()
    for (model, version), manifest in manifests.items():
        assert local.store.manifest(model, version) == manifest
        assert local.store.fetch(model, version).read_bytes() == source.fetch(model, version).read_bytes()

    # and back: a local catalog pushed into a fresh prefix of the same bucket, then a no-op second run
    other = backend.server.new_root() if backend.server else str(tmp_path / "other")
    dest_options = ["--dest-storage-options", json.dumps(backend.storage_options or {})]
    assert main(["sync", str(pvc), other, *dest_options]) == 0
    assert main(["sync", str(pvc), other, *dest_options]) == 0
    assert ": 0 copied, 3 already present, 0 failed; aliases of 0 model(s)" in capsys.readouterr().out
    pushed = _catalog(
        other, tmp_path / "t2", {**(backend.storage_options or {}), "skip_instance_cache": True}
    )
    assert pushed.aliases("a") == {"stable": "1", "canary": "2"}
    assert pushed.versions("a") == ["1", "2"] and pushed.versions("b") == ["1"]
    assert pushed.store.manifest("b", "1") == manifests[("b", "1")]
