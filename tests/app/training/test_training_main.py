"""The command line: mistakes exit 2, failures exit 1, both with one line naming the problem, and
both before any training (no Ray is started) and without touching the store."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from manymodels.store import TensorSpec, open_store, publish_version, set_store_aliases
from manymodels.training.__main__ import _fail, main


def test_a_bad_task_import_path_fails_loudly(tmp_path: Path) -> None:
    # the real command, as the RayJob runs it
    done = subprocess.run(
        [sys.executable, "-m", "manymodels.training", "--store", str(tmp_path), "--model", "m"]
        + ["--task", "mycompany.tasks:Churn"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert "error: training task 'mycompany.tasks:Churn': cannot import 'mycompany.tasks'" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "m"], "--store is required (or set MM_MODEL_ROOT)"),
        (["--store", "{root}", "--model", "bad/name"], "invalid model name 'bad/name'"),
        (["--store", "{root}", "--model", "m", "--options-json", "[1]"], "expected a JSON object"),
        (["--store", "{root}", "--model", "m", "--options-json", "{"], "--options-json: invalid JSON"),
        (["--store", "{root}", "--model", "m", "--num-workers", "0"], "--num-workers must be >= 1"),
        (["--store", "{root}", "--model", "m", "--options-json", '{"epochs": -1}'], "epochs must be"),
        (["--store", "{root}", "--model", "m", "--task", "manymodels.training.task:TaskError"], "subclass"),
    ],
)
def test_mistakes_exit_2(
    args: list[str],
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MM_MODEL_ROOT", raising=False)
    assert main([a.replace("{root}", str(tmp_path)) for a in args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
    assert list(tmp_path.iterdir()) == []


def test_an_unreachable_store_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--store", str(tmp_path / "missing"), "--model", "m"]) == 1
    assert "is not a directory" in capsys.readouterr().err


def test_a_stable_version_the_task_cannot_score_exits_1(
    demo_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # mlp-000's stable version returns 'logits' from 64 features; DemoTask feeds 'input' [n, 8]
    root = tmp_path / "store"
    shutil.copytree(demo_catalog / "mlp-000", root / "mlp-000")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    assert main(["--store", str(root), "--model", "mlp-000"]) == 1
    err = capsys.readouterr().err
    assert "cannot score the stable version '1' of model 'mlp-000'" in err
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_without_torch_it_says_which_image_to_use(tmp_path: Path) -> None:
    # the CPU image has no torch: one line naming the GPU image, not a traceback
    code = (
        "import sys; sys.modules['torch'] = None; from manymodels.training.__main__ import main; "
        f"sys.exit(main(['--store', {str(tmp_path)!r}, '--model', 'm']))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "the training job needs torch and ray[train] (the GPU image has both" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_fsspec_store_is_read_like_the_server_reads_it(
    demo_catalog: Path, mem_root: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # memory:// goes through RemoteStore: aliases read and the stable artifact fetched (sha-verified)
    # through a disk tier, then scored; mlp-000 cannot be scored by DemoTask, so the run stops there
    source = demo_catalog / "mlp-000" / "1"
    manifest = json.loads((source / "manifest.json").read_text())
    publish_version(
        mem_root,
        "mlp-000",
        "1",
        runtime="onnx",
        artifact=source / manifest["artifact"],
        inputs=[TensorSpec(**s) for s in manifest["inputs"]],
        outputs=[TensorSpec(**s) for s in manifest["outputs"]],
    )
    set_store_aliases(mem_root, "mlp-000", {"stable": "1"})
    assert main(["--store", mem_root, "--model", "mlp-000", "--storage-options", "{}"]) == 1
    assert "cannot score the stable version '1' of model 'mlp-000'" in capsys.readouterr().err
    assert open_store(mem_root, cache_dir=tmp_path).list_versions("mlp-000") == ["1"]


def test_a_worker_traceback_becomes_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    message = "Training failed due to worker errors:\n[Rank 0]:\nTraceback ...\n  line\nRuntimeError: boom\n"
    assert _fail(f"WorkerGroupError: {message}", 1) == 1
    err = capsys.readouterr().err
    assert err == (
        "python -m manymodels.training: error: WorkerGroupError: Training failed due to worker errors: "
        "... RuntimeError: boom\n"
    )
