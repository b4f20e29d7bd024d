"""``python -m manymodels publish|alias`` against a local directory and fsspec's in-process
``memory://`` filesystem: what the server's store sees afterwards, and one clear line (exit 2) for
every mistake a caller can make."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import fsspec
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import manymodels.cli
from manymodels.cli import main
from manymodels.cli_publish import storage_options, tensor_spec
from manymodels.store import Catalog, ModelManifest, TensorSpec, open_store


@pytest.fixture(autouse=True)
def no_supervisor(monkeypatch: pytest.MonkeyPatch) -> None:
    """publish/alias must run in this process: never through the supervisor (and so Ray)."""

    def refuse(*_: object) -> int:
        raise AssertionError("publish/alias went through run_supervised")

    monkeypatch.setattr(manymodels.cli, "run_supervised", refuse)


@pytest.fixture
def mlp(demo_catalog: Path) -> tuple[Path, ModelManifest]:
    """The demo's mlp-000 v1: its ONNX artifact and the manifest the generator wrote for it."""
    folder = demo_catalog / "mlp-000" / "1"
    manifest = ModelManifest.model_validate_json((folder / "manifest.json").read_text())
    return folder / manifest.artifact, manifest


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def server_view(uri: str, tmp_path: Path) -> Catalog:
    tier = tmp_path / f"tier-{uuid.uuid4().hex}"
    return Catalog(open_store(uri, cache_dir=tier if "://" in uri else None))


# -- publishing ------------------------------------------------------------------------------------


def test_publish_onnx_reads_its_signature_from_the_graph(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mlp: tuple[Path, ModelManifest]
) -> None:
    artifact, original = mlp
    root = tmp_path / "models"
    status, out, err = cli(
        capsys, "publish", str(root), "mlp-000", "3", str(artifact), "--description", "re-published"
    )
    assert (status, err) == (0, "")
    assert out == (
        f"published mlp-000 version 3 (sha256 {original.sha256}, {original.size_bytes} bytes) to {root}\n"
    )
    catalog = server_view(str(root), tmp_path)
    manifest = catalog.store.manifest("mlp-000", "3")
    assert (manifest.runtime, manifest.format) == ("onnx", "onnx")
    assert manifest.inputs == original.inputs  # input [-1, 64]: the symbolic batch dim is -1
    assert manifest.outputs == original.outputs
    assert (manifest.sha256, manifest.description) == (original.sha256, "re-published")
    assert catalog.resolve("mlp-000") == "3"
    assert catalog.store.fetch("mlp-000", "3").read_bytes() == artifact.read_bytes()


def test_publish_and_alias_on_an_object_store(
    mem_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], mlp: tuple[Path, ModelManifest]
) -> None:
    artifact, original = mlp
    options = tmp_path / "options.json"
    options.write_text(json.dumps({"use_listings_cache": False}))
    status, out, err = cli(
        capsys, "publish", mem_root, "mlp-000", "1", str(artifact), "--alias", "stable", "canary",
        "--storage-options", f"@{options}",
    )  # fmt: skip
    assert (status, err) == (0, "")
    assert out.splitlines() == [
        f"published mlp-000 version 1 (sha256 {original.sha256}, {original.size_bytes} bytes) to {mem_root}",
        "alias stable -> 1",
        "alias canary -> 1",
    ]
    status, _, err = cli(
        capsys, "publish", mem_root, "mlp-000", "2", str(artifact), "--storage-options", "{}"
    )
    assert (status, err) == (0, "")
    catalog = server_view(mem_root, tmp_path)
    assert catalog.versions("mlp-000") == ["1", "2"]
    assert catalog.store.manifest("mlp-000", "2").inputs == original.inputs
    assert catalog.resolve("mlp-000") == "1"  # stable wins over latest
    assert catalog.store.fetch("mlp-000", "2").read_bytes() == artifact.read_bytes()

    # moving one alias keeps the others
    status, out, err = cli(capsys, "alias", mem_root, "mlp-000", "canary", "2")
    assert (status, out, err) == (0, f"alias canary -> 2 (mlp-000 in {mem_root})\n", "")
    catalog = server_view(mem_root, tmp_path)
    assert catalog.aliases("mlp-000") == {"stable": "1", "canary": "2"}
    assert catalog.resolve("mlp-000", "canary") == "2"

    status, out, err = cli(capsys, "alias", mem_root, "mlp-000", "canary", "--delete")
    assert (status, err) == (0, "") and "deleted alias canary" in out
    assert server_view(mem_root, tmp_path).aliases("mlp-000") == {"stable": "1"}


def test_alias_merges_into_the_stores_aliases(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_catalog: Path
) -> None:
    root = tmp_path / "models"
    shutil.copytree(demo_catalog / "mlp-000", root / "mlp-000")  # stable=1, canary=2
    assert cli(capsys, "alias", str(root), "mlp-000", "stable", "2")[0] == 0
    assert cli(capsys, "alias", f"file://{root}", "mlp-000", "beta", "1")[0] == 0
    catalog = server_view(str(root), tmp_path)
    assert catalog.aliases("mlp-000") == {"stable": "2", "canary": "2", "beta": "1"}
    assert catalog.resolve("mlp-000") == "2"
    # --alias on publish merges the same way
    artifact = demo_catalog / "mlp-000" / "1" / "model.onnx"
    assert cli(capsys, "publish", str(root), "mlp-000", "3", str(artifact), "--alias", "beta")[0] == 0
    assert server_view(str(root), tmp_path).aliases("mlp-000") == {
        "stable": "2",
        "canary": "2",
        "beta": "3",
    }


def test_overwrite_replaces_a_published_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mlp: tuple[Path, ModelManifest]
) -> None:
    artifact, _ = mlp
    root = str(tmp_path / "models")
    other = tmp_path / "other.onnx"
    other.write_bytes(_tiny_onnx().SerializeToString())
    assert cli(capsys, "publish", root, "m", "1", str(artifact))[0] == 0
    status, _, err = cli(capsys, "publish", root, "m", "1", str(other), "--overwrite")
    assert (status, err) == (0, "")
    manifest = server_view(root, tmp_path).store.manifest("m", "1")
    assert [s.name for s in manifest.inputs] == ["text", "ids"]


def _tiny_onnx() -> onnx.ModelProto:
    """Inputs of every kind the graph reader meets: a string tensor with a symbolic dim, an int64
    tensor with an unknown dim, and a weight that (old exporters) is also listed as an input."""
    weight = numpy_helper.from_array(np.ones((3, 2), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Identity", ["ids"], ["out"])],
        "tiny",
        [
            helper.make_tensor_value_info("text", TensorProto.STRING, ["n"]),
            helper.make_tensor_value_info("ids", TensorProto.INT64, [None, 3]),
            helper.make_tensor_value_info("w", TensorProto.FLOAT, [3, 2]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.INT64, [None, 3])],
        [weight],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_graph_signature_dtypes_and_dynamic_dims(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    artifact = tmp_path / "tiny.onnx"
    artifact.write_bytes(_tiny_onnx().SerializeToString())
    root = str(tmp_path / "models")
    assert cli(capsys, "publish", root, "tiny", "1", str(artifact))[0] == 0
    manifest = server_view(root, tmp_path).store.manifest("tiny", "1")
    assert manifest.inputs == [
        TensorSpec(name="text", dtype="bytes", shape=[-1]),
        TensorSpec(name="ids", dtype="int64", shape=[-1, 3]),
    ]
    assert manifest.outputs == [TensorSpec(name="out", dtype="int64", shape=[-1, 3])]


def test_given_onnx_specs_are_kept_when_they_name_graph_tensors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mlp: tuple[Path, ModelManifest]
) -> None:
    artifact, _ = mlp
    root = str(tmp_path / "models")
    status, _, err = cli(
        capsys, "publish", root, "m", "1", str(artifact), "--runtime", "onnx",
        "--input", "input:float32:[-1,64]", "--output", "logits:float32:8,10",
    )  # fmt: skip
    assert (status, err) == (0, "")
    manifest = server_view(root, tmp_path).store.manifest("m", "1")
    assert manifest.inputs == [TensorSpec(name="input", dtype="float32", shape=[-1, 64])]
    assert manifest.outputs == [TensorSpec(name="logits", dtype="float32", shape=[8, 10])]


def test_torch_formats_take_their_tensors_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "models")
    exported = tmp_path / "model.pt2"
    exported.write_bytes(b"not loaded by publish")
    status, _, err = cli(
        capsys, "publish", root, "exp", "1", str(exported),
        "--input", "input:float32:-1,64", "--output", "logits:float32:-1,10", "scores:float16:",
    )  # fmt: skip
    assert (status, err) == (0, "")
    manifest = server_view(root, tmp_path).store.manifest("exp", "1")
    assert (manifest.runtime, manifest.format, manifest.artifact) == ("torch", "torch_export", "model.pt2")
    assert manifest.outputs == [
        TensorSpec(name="logits", dtype="float32", shape=[-1, 10]),
        TensorSpec(name="scores", dtype="float16", shape=[]),
    ]
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"state dict")
    status, _, err = cli(
        capsys, "publish", root, "state", "1", str(weights), "--format", "torch_state_dict",
        "--input", "x:float32:-1,4", "--output", "y:float32:-1,2",
    )  # fmt: skip
    assert (status, err) == (0, "")
    manifest = server_view(root, tmp_path).store.manifest("state", "1")
    assert (manifest.runtime, manifest.format) == ("torch", "torch_state_dict")


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_republished_torchscript_matches_the_demo(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], demo_catalog: Path
) -> None:
    folder = demo_catalog / "torch-script" / "1"
    original = ModelManifest.model_validate_json((folder / "manifest.json").read_text())
    root = str(tmp_path / "models")
    status, _, err = cli(
        capsys, "publish", root, "torch-script", "1", str(folder / original.artifact),
        "--runtime", "torch", "--format", "torchscript", "--input", "input:float32:-1,64",
        "--output", "logits:float32:-1,10", "--output", "probabilities:float32:-1,10",
        "--description", original.description,
    )  # fmt: skip
    assert (status, err) == (0, "")
    assert server_view(root, tmp_path).store.manifest("torch-script", "1") == original


# -- mistakes: exit 2, one line on stderr, nothing written -------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--storage-options", "{bad"], "--storage-options: invalid JSON"),
        (["--storage-options", "[1, 2]"], "expected a JSON object, got list"),
        (["--storage-options", "@/nonexistent/options.json"], "cannot read '/nonexistent/options.json'"),
        (["--runtime", "tensorflow"], "unknown runtime 'tensorflow' (use onnx or torch)"),
        (["--format", "savedmodel"], "unknown format 'savedmodel'"),
        (["--runtime", "onnx", "--format", "torchscript"], "runtime onnx cannot load format 'torchscript'"),
        (["--runtime", "torch"], "runtime torch needs --format"),
        (["--input", "input:float33:-1,64"], "unknown dtype 'float33'"),
        (["--input", "input:float32:-1,x"], "SHAPE is comma-separated sizes"),
        (["--input", "input-64"], "expected NAME:DTYPE:SHAPE"),
        (["--input", "features:float32:-1,64"], "--input names ['features'] do not match the graph's"),
        (["--output", "probs:float32:-1,10"], "--output ['probs'] are not graph outputs ['logits']"),
        (["--alias", "bad/alias"], "invalid alias name 'bad/alias'"),
    ],
)
def test_publish_mistakes(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mlp: tuple[Path, ModelManifest],
    extra: list[str],
    message: str,
) -> None:
    artifact, _ = mlp
    root = tmp_path / "models"
    status, out, err = cli(capsys, "publish", str(root), "m", "1", str(artifact), *extra)
    _assert_usage_error(status, out, err, "publish", message)
    assert not root.exists()


@pytest.mark.parametrize(
    ("model", "version", "artifact", "extra", "message"),
    [
        ("../up", "1", "model.onnx", [], "invalid model name '../up'"),
        ("m", "1/2", "model.onnx", [], "invalid version name '1/2'"),
        ("m", "1", "missing.onnx", [], "artifact '{dir}/missing.onnx' not found"),
        ("m", "1", ".", [], "artifact '{dir}/.' is not a file"),
        ("m", "1", "model.bin", [], "cannot tell the runtime from 'model.bin'"),
        ("m", "1", "junk.onnx", [], "is not a readable ONNX model"),
        ("m", "1", "model.pt", ["--format", "torchscript"], "runtime torch needs --input and --output"),
        ("m", "1", "model.pt", ["--format", "torchscript", "--input", "x:float32:1"], "and --output"),
    ],
)
def test_publish_mistakes_in_names_and_artifacts(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    version: str,
    artifact: str,
    extra: list[str],
    message: str,
) -> None:
    files = tmp_path / "files"
    files.mkdir()
    for name in ("model.bin", "model.pt"):
        (files / name).write_bytes(b"weights")
    (files / "junk.onnx").write_bytes(b"\xff\xff not protobuf")
    (files / "model.onnx").write_bytes(_tiny_onnx().SerializeToString())
    root = tmp_path / "models"
    status, out, err = cli(capsys, "publish", str(root), model, version, f"{files}/{artifact}", *extra)
    _assert_usage_error(status, out, err, "publish", message.format(dir=files))
    assert not root.exists()


def test_publishing_twice_needs_overwrite(
    mem_root: str, capsys: pytest.CaptureFixture[str], mlp: tuple[Path, ModelManifest]
) -> None:
    artifact, _ = mlp
    assert cli(capsys, "publish", mem_root, "m", "1", str(artifact))[0] == 0
    status, out, err = cli(capsys, "publish", mem_root, "m", "1", str(artifact), "--alias", "stable")
    _assert_usage_error(
        status, out, err, "publish", "model 'm' version '1' is already published", "pass --overwrite"
    )
    fs, path = fsspec.core.url_to_fs(mem_root)
    assert not fs.exists(f"{path}/m/aliases.json")


def test_alias_mistakes(
    mem_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], mlp: tuple[Path, ModelManifest]
) -> None:
    artifact, _ = mlp
    assert cli(capsys, "publish", mem_root, "m", "1", str(artifact), "--alias", "stable")[0] == 0

    def fails(*argv: str, message: str) -> None:
        _assert_usage_error(*cli(capsys, "alias", *argv), "alias", message)

    fails(mem_root, "m", "stable", "7", message="model 'm' has no published version '7'")
    fails(mem_root, "other", "stable", "1", message="model 'other' is not in")
    fails(mem_root, "m", "canary", "--delete", message="model 'm' has no alias 'canary'")
    fails(mem_root, "m", "stable", message="VERSION is required")
    fails(mem_root, "m", "stable", "1", "--delete", message="--delete takes no VERSION")
    fails(mem_root, "m", "bad alias", "1", message="invalid alias name 'bad alias'")
    fails(mem_root, "m", "stable", "../1", message="invalid version name '../1'")
    fails(mem_root, "m", "stable", "1", "--storage-options", "nope", message="invalid JSON")
    fails(str(tmp_path / "absent"), "m", "stable", "1", message="is not a directory")
    assert server_view(mem_root, tmp_path).aliases("m") == {"stable": "1"}

    # --force points an alias at a version that is about to be published
    status, out, err = cli(capsys, "alias", mem_root, "m", "next", "2", "--force")
    assert (status, err) == (0, "") and "alias next -> 2" in out
    assert server_view(mem_root, tmp_path).aliases("m") == {"stable": "1", "next": "2"}


def test_a_broken_aliases_file_is_not_overwritten(
    mem_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], mlp: tuple[Path, ModelManifest]
) -> None:
    artifact, _ = mlp
    assert cli(capsys, "publish", mem_root, "m", "1", str(artifact))[0] == 0
    fs, path = fsspec.core.url_to_fs(mem_root)
    fs.pipe(f"{path}/m/aliases.json", b"{not json")
    status, out, err = cli(capsys, "alias", mem_root, "m", "stable", "1")
    _assert_usage_error(status, out, err, "alias", "aliases.json of model 'm'", "fix or remove it")
    status, out, err = cli(capsys, "publish", mem_root, "m", "2", str(artifact), "--alias", "stable")
    _assert_usage_error(status, out, err, "publish", "published m version 2", "aliases were not set")
    assert fs.cat(f"{path}/m/aliases.json") == b"{not json"


def test_unknown_protocol_and_missing_backend(
    capsys: pytest.CaptureFixture[str], mlp: tuple[Path, ModelManifest]
) -> None:
    artifact, _ = mlp
    status, out, err = cli(capsys, "publish", "nope://bucket/models", "m", "1", str(artifact))
    _assert_usage_error(status, out, err, "publish", "nope")
    if importlib.util.find_spec("s3fs") is None:
        status, out, err = cli(capsys, "publish", "s3://bucket/models", "m", "1", str(artifact))
        _assert_usage_error(status, out, err, "publish", "s3fs", "[s3] extra")


def test_option_parsers() -> None:
    assert storage_options(None) == {}
    assert storage_options('{"anon": false, "client_kwargs": {"region_name": "eu-west-1"}}') == {
        "anon": False,
        "client_kwargs": {"region_name": "eu-west-1"},
    }
    assert tensor_spec("input:0:float32:-1, 3") == TensorSpec(name="input:0", dtype="float32", shape=[-1, 3])
    assert tensor_spec("flag:bool:") == TensorSpec(name="flag", dtype="bool", shape=[])


def _assert_usage_error(status: int, out: str, err: str, command: str, *fragments: str) -> None:
    assert status == 2, (out, err)
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"python -m manymodels {command}: error: ")
    for fragment in fragments:
        assert fragment in lines[0]


# -- the module entry ------------------------------------------------------------------------------


def test_module_entry_publishes_without_ray(tmp_path: Path, mlp: tuple[Path, ModelManifest]) -> None:
    artifact, original = mlp
    root = tmp_path / "models"
    argv = ["publish", str(root), "mlp-000", "5", str(artifact), "--alias", "stable"]
    started = time.monotonic()
    # -X importtime lists every module the command imports (on stderr)
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "manymodels", *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        f"published mlp-000 version 5 (sha256 {original.sha256}, {original.size_bytes} bytes) to {root}",
        "alias stable -> 5",
    ]
    imported = re.findall(r"\|\s+([\w.]+)\s*$", done.stderr, flags=re.MULTILINE)
    assert "manymodels.cli_publish" in imported
    assert not [m for m in imported if m == "ray" or m.startswith("ray.")]
    assert elapsed < 15, f"took {elapsed:.1f}s"
    assert Catalog(open_store(str(root))).resolve("mlp-000") == "5"

    failed = subprocess.run(
        [sys.executable, "-m", "manymodels", "alias", str(root), "mlp-000", "stable", "9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert failed.returncode == 2
    assert failed.stdout == "" and len(failed.stderr.splitlines()) == 1
    assert "no published version '9'" in failed.stderr
