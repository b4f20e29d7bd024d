"""``python -m manymodels sync SOURCE DEST`` (what the chart's catalog loader runs) between local
folders and fsspec's in-process ``memory://`` filesystem: DEST reads exactly like SOURCE through the
server's store, a corrupt source version is reported and leaves nothing behind, and a second run
copies nothing. tests/app/store/test_store_sync.py runs it against the real object-store servers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import fsspec
import pytest

import manymodels.cli
from manymodels.cli import main
from manymodels.cli_sync import COPIED_FIELDS
from manymodels.store import Catalog, ModelManifest, open_store, publish_version, set_store_aliases


@pytest.fixture(autouse=True)
def no_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """sync must run in this process: never through the supervisor (and so Ray)."""

    def refuse(*_: object) -> int:
        raise AssertionError("sync went through run_supervised")

    monkeypatch.setattr(manymodels.cli, "run_supervised", refuse)


@pytest.fixture
def source(tmp_path: Path, demo_catalog: Path) -> Path:
    """A private copy of three demo models: text-sentiment (1, 2; stable=1, canary=2), mlp-000 (1, 2;
    stable=1, canary=2), mlp-001 (1)."""
    root = tmp_path / "source"
    for model in ("text-sentiment", "mlp-000", "mlp-001"):
        shutil.copytree(demo_catalog / model, root / model)
    return root


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def view(uri: str, tmp_path: Path, options: dict | None = None) -> Catalog:
    tier = tmp_path / "tier-view"
    return Catalog(open_store(uri, cache_dir=tier if "://" in uri else None, storage_options=options))


def assert_same_catalog(a: Catalog, b: Catalog) -> None:
    """Same models, versions, manifests, aliases and artifact bytes, as the server reads them."""
    assert a.models() == b.models()
    for model in a.models():
        assert a.versions(model) == b.versions(model), model
        assert a.aliases(model) == b.aliases(model), model
        for version in a.versions(model):
            assert a.store.manifest(model, version) == b.store.manifest(model, version)
            assert a.store.fetch(model, version).read_bytes() == b.store.fetch(model, version).read_bytes()


def summary(copied: int, present: int, failed: int, aliases: int) -> str:
    return (
        f"{copied} copied, {present} already present, {failed} failed; aliases of {aliases} model(s) updated"
    )


def test_sync_copies_every_version_and_alias_then_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path
) -> None:
    dest = tmp_path / "pvc" / "catalog"  # created when missing
    status, out, err = cli(capsys, "sync", str(source), str(dest))
    assert (status, err) == (0, ""), out
    lines = out.splitlines()
    manifest = view(str(source), tmp_path).store.manifest("mlp-001", "1")
    assert f"copied mlp-001 version 1 (sha256 {manifest.sha256}, {manifest.size_bytes} bytes)" in lines
    assert "aliases mlp-000: canary -> 2, stable -> 1" in lines
    assert lines[-1] == f"sync {source} -> {dest}: {summary(5, 0, 0, 2)}"
    assert_same_catalog(view(str(source), tmp_path), view(str(dest), tmp_path))

    # idempotent: nothing is copied or rewritten
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()}
    status, out, err = cli(capsys, "sync", str(source), str(dest))
    assert (status, out, err) == (0, f"sync {source} -> {dest}: {summary(0, 5, 0, 0)}\n", "")
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*") if p.is_file()} == before


def test_a_corrupt_source_version_fails_and_leaves_nothing_in_dest(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path, demo_catalog: Path
) -> None:
    artifact = source / "mlp-000" / "2" / "model.onnx"
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"\0")
    dest = tmp_path / "dest"
    status, out, err = cli(capsys, "sync", str(source), str(dest))
    assert status == 1
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("failed: model 'mlp-000' version '2': artifact sha256 mismatch, expected ")
    assert lines[1] == f"failed: aliases of model 'mlp-000': not updated: canary -> 2 not in {dest}"
    assert out.splitlines()[-1] == f"sync {source} -> {dest}: {summary(4, 0, 2, 1)}"
    # nothing of version 2, and no aliases pointing at it; the rest was copied
    assert not (dest / "mlp-000" / "2").exists()
    assert not (dest / "mlp-000" / "aliases.json").exists()
    catalog = view(str(dest), tmp_path)
    assert catalog.versions("mlp-000") == ["1"]
    assert catalog.versions("text-sentiment") == ["1", "2"]

    # once the source is repaired, the next run copies what is missing, then the aliases
    shutil.copy(demo_catalog / "mlp-000" / "2" / "model.onnx", artifact)
    status, out, err = cli(capsys, "sync", str(source), str(dest))
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == f"sync {source} -> {dest}: {summary(1, 4, 0, 1)}"
    assert_same_catalog(view(str(source), tmp_path), view(str(dest), tmp_path))


def test_a_differing_version_needs_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path
) -> None:
    dest = tmp_path / "dest"
    other = source / "mlp-001" / "1" / "model.onnx"
    publish_version(dest, "mlp-000", "1", runtime="onnx", artifact=other, inputs=[], outputs=[])
    status, out, err = cli(capsys, "sync", str(source), str(dest), "--model", "mlp-000")
    assert status == 1
    assert err.startswith("failed: model 'mlp-000' version '1': differs from its copy in ")
    assert "published versions are immutable; pass --overwrite to replace it" in err
    assert out.splitlines()[-1] == f"sync {source} -> {dest}: {summary(1, 0, 2, 0)}"

    status, out, err = cli(capsys, "sync", str(source), str(dest), "--model", "mlp-000", "--overwrite")
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == f"sync {source} -> {dest}: {summary(1, 1, 0, 1)}"
    assert view(str(dest), tmp_path).store.manifest("mlp-000", "1") == view(
        str(source), tmp_path
    ).store.manifest("mlp-000", "1")


def test_aliases_follow_the_source(tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path) -> None:
    dest = tmp_path / "dest"
    assert cli(capsys, "sync", str(source), str(dest))[0] == 0
    set_store_aliases(source, "mlp-000", {"stable": "2"})  # canary removed, stable moved
    status, out, err = cli(capsys, "sync", str(source), str(dest))
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        "aliases mlp-000: stable -> 2",
        f"sync {source} -> {dest}: {summary(0, 5, 0, 1)}",
    ]
    catalog = view(str(dest), tmp_path)
    assert catalog.aliases("mlp-000") == {"stable": "2"}
    assert catalog.resolve("mlp-000") == "2"
    # a broken aliases.json in DEST is replaced by the source's
    (dest / "text-sentiment" / "aliases.json").write_text("{not json")
    assert cli(capsys, "sync", str(source), str(dest))[0] == 0
    assert view(str(dest), tmp_path).aliases("text-sentiment") == {"stable": "1", "canary": "2"}


def test_only_the_named_models(tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path) -> None:
    dest = tmp_path / "dest"
    status, out, err = cli(capsys, "sync", str(source), str(dest), "--model", "mlp-001", "absent")
    assert status == 1
    assert err == f"failed: model 'absent' not found in store {source}\n"
    assert out.splitlines()[-1] == f"sync {source} -> {dest}: {summary(1, 0, 1, 0)}"
    assert view(str(dest), tmp_path).models() == ["mlp-001"]


def test_object_store_to_object_store(
    mem_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], source: Path
) -> None:
    """memory:// -> local, then local -> memory://: both sides through fsspec and the disk tier."""
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"skip_instance_cache": True}))
    assert cli(capsys, "sync", str(source), mem_root, "--dest-storage-options", "{}")[0] == 0
    dest = tmp_path / "dest"
    status, out, err = cli(capsys, "sync", mem_root, str(dest), "--storage-options", f"@{options}")
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == f"sync {mem_root} -> {dest}: {summary(5, 0, 0, 2)}"
    assert_same_catalog(view(str(source), tmp_path), view(str(dest), tmp_path))
    assert_same_catalog(view(str(source), tmp_path), view(mem_root, tmp_path))
    # a corrupt object is caught by the disk tier's check before anything is written
    fs, path = fsspec.core.url_to_fs(mem_root)
    fs.pipe(f"{path}/mlp-001/1/model.onnx", b"not the published bytes")
    fresh = tmp_path / "fresh"
    status, out, err = cli(capsys, "sync", mem_root, str(fresh), "--model", "mlp-001")
    assert status == 1 and "artifact sha256 mismatch" in err
    assert not (fresh / "mlp-001").exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{tmp}/empty", "{tmp}/dest"], "holds no models"),
        (["{tmp}/absent", "{tmp}/dest"], "is not a directory"),
        (["{tmp}/empty", "{tmp}/dest", "--model", "../up"], "invalid model name '../up'"),
        (
            ["{tmp}/empty", "{tmp}/dest", "--storage-options", "[1]"],
            "--storage-options: expected a JSON object",
        ),
        (
            ["{tmp}/empty", "{tmp}/dest", "--dest-storage-options", "nope"],
            "--dest-storage-options: invalid JSON",
        ),
        (["nope://bucket/models", "{tmp}/dest"], "nope"),
    ],
)
def test_sync_mistakes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "empty").mkdir()
    status, out, err = cli(capsys, "sync", *(a.format(tmp=tmp_path) for a in argv))
    assert (status, out) == (2, "")
    assert err.startswith("python -m manymodels sync: error: ") and message in err, err
    assert len(err.splitlines()) == 1


def test_every_manifest_field_is_copied() -> None:
    """publish_version computes the rest; a new manifest field must be added to COPIED_FIELDS."""
    computed = {"name", "version", "artifact", "sha256", "size_bytes"}
    assert set(ModelManifest.model_fields) == computed | set(COPIED_FIELDS)


def test_module_entry_syncs_without_ray(tmp_path: Path, source: Path) -> None:
    dest = tmp_path / "dest"
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "manymodels", "sync", str(source), str(dest)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines()[-1] == f"sync {source} -> {dest}: {summary(5, 0, 0, 2)}"
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert not {m for m in imported if m == "ray" or m.startswith("ray.")}
