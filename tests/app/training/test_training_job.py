"""The training job on a local Ray with 2 Ray Train workers, three runs against one store:

(a) the first run (through the CLI's ``main``) publishes a version and makes it canary and stable;
(b) a better run publishes, moves canary and stable;
(c) a worse run (the same task, fewer epochs) publishes and moves canary, but stable stays;
(d) the server then answers ``canary`` with (c) and ``stable`` (and no version) with (b), exactly
    as ONNX Runtime runs the published artifacts.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from planes import serve

from manymodels.config import ServerConfig
from manymodels.dataplane import DataPlane
from manymodels.store import open_store
from manymodels.training.__main__ import main
from manymodels.training.demo import DemoTask
from manymodels.training.evaluation import predict_onnx
from manymodels.training.job import JobSummary, run_training_job
from manymodels.training.settings import JobSettings, Scaling

MODEL = "demo-regressor"
MIN_SCORE = 0.3
FEW = {"epochs": 3, "samples": 1024}  # good enough to pass MIN_SCORE, clearly short of MANY
MANY = {"epochs": 25, "samples": 1024}
SCALING = Scaling(num_workers=2, cpus_per_worker=0.5)  # fits beside other tests' Ray actors


@dataclass
class Runs:
    root: Path
    first: dict[str, Any]
    better: JobSummary
    worse: JobSummary
    aliases: list[dict[str, str]]  # after each run


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    started = not ray.is_initialized()
    if started:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    if started:
        ray.shutdown()


def aliases(root: Path) -> dict[str, str]:
    return open_store(str(root)).store_aliases(MODEL)


@pytest.fixture(scope="module")
def runs(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("training-store")
    out = io.StringIO()
    with redirect_stdout(out):
        status = main(
            ["--store", str(root), "--model", MODEL, "--min-score", str(MIN_SCORE)]
            + ["--cpus-per-worker", "0.5", "--options-json", json.dumps(FEW)]
        )
    assert status == 0
    first = json.loads(out.getvalue().strip().splitlines()[-1])
    seen = [aliases(root)]
    settings = JobSettings(store=str(root), model=MODEL, scaling=SCALING, min_score=MIN_SCORE)
    better = run_training_job(JobSettings(**{**vars(settings), "options": MANY, "version": "b2"}))
    seen.append(aliases(root))
    worse = run_training_job(JobSettings(**{**vars(settings), "options": FEW, "version": "c3"}))
    seen.append(aliases(root))
    return Runs(root, first, better, worse, seen)


def test_first_run_publishes_and_promotes(runs: Runs) -> None:
    first = runs.first
    assert re.fullmatch(r"t\d{8}-\d{6}", first["version"])  # the default version name
    assert first["model"] == MODEL and first["promoted"] is True
    assert first["stable_version"] is None and first["stable_score"] is None
    assert first["score"] >= MIN_SCORE and first["train_loss"] > 0
    assert runs.aliases[0] == {"canary": first["version"], "stable": first["version"]}
    manifest = open_store(str(runs.root)).manifest(MODEL, first["version"])
    assert manifest.runtime == "onnx" and manifest.inputs[0].shape == [-1, 8]
    assert manifest.outputs[0].shape == [-1, 1]


def test_a_better_run_moves_canary_and_stable(runs: Runs) -> None:
    better = runs.better
    assert better.stable_version == runs.first["version"]
    assert better.stable_score == pytest.approx(runs.first["score"])
    assert better.score is not None and better.score > runs.first["score"]
    assert better.promoted
    assert runs.aliases[1] == {"canary": "b2", "stable": "b2"}


def test_a_worse_run_is_published_as_canary_but_not_promoted(runs: Runs) -> None:
    worse = runs.worse
    assert worse.stable_version == "b2" and worse.stable_score == pytest.approx(runs.better.score)
    assert worse.score is not None and MIN_SCORE <= worse.score < runs.better.score
    assert not worse.promoted and "below the stable score" in worse.reason
    assert runs.aliases[2] == {"canary": "c3", "stable": "b2"}
    assert open_store(str(runs.root)).list_versions(MODEL) == ["b2", "c3", runs.first["version"]]


def test_the_server_serves_canary_and_stable(runs: Runs) -> None:
    rows, _ = DemoTask(FEW).evaluation_data()
    rows = rows[:16]
    config = ServerConfig.model_validate({"store": {"uri": str(runs.root), "refresh_interval_s": 0}})

    async def scenario(client: httpx.AsyncClient, plane: DataPlane) -> dict[str, Any]:
        answers = {}
        for ref in ("canary", "stable", None):
            body: dict[str, Any] = {"model": MODEL, "input_data": rows.tolist()}
            if ref is not None:
                body["version"] = ref
            r = await client.post("/predict", json=body)
            assert r.status_code == 200, r.text
            answers[ref] = r.json()
        return answers

    answers = serve(config, scenario)
    expected = {"canary": "c3", "stable": "b2", None: "b2"}
    for ref, version in expected.items():
        assert answers[ref]["version"] == version
        artifact = runs.root / MODEL / version / "model.onnx"
        want = predict_onnx(artifact, rows, input_name="input", output_name="output")
        np.testing.assert_allclose(np.asarray(answers[ref]["outputs"]["output"]), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(answers["canary"]["outputs"]["output"], answers["stable"]["outputs"]["output"])


def test_an_existing_version_is_refused_before_training(
    runs: Runs, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["--store", str(runs.root), "--model", MODEL, "--version", "b2"])
    assert status == 2
    assert "version 'b2' is already published" in capsys.readouterr().err
    assert aliases(runs.root) == runs.aliases[-1]


# ---- the publish step's guards, without Ray: train_with_ray replaced by an untrained DemoTask model
@dataclass
class FakeTraining:
    runs: list[str]  # run names, one per "training"
    during: list  # callables run while "training", as another writer would act meanwhile


@pytest.fixture
def untrained(monkeypatch: pytest.MonkeyPatch) -> FakeTraining:
    """Each "training" returns DemoTask's untrained model (same seed: the same score every time)."""
    import torch

    from manymodels.training import job
    from manymodels.training.ray_trainer import TrainOutcome

    fake = FakeTraining(runs=[], during=[])

    def fake_train(task_path: str, options: dict, scaling: Scaling, *, run_name: str) -> TrainOutcome:
        fake.runs.append(run_name)
        while fake.during:
            fake.during.pop()()
        torch.manual_seed(0)
        return TrainOutcome(model=DemoTask(options).build_model().eval(), final_loss=float("nan"))

    monkeypatch.setattr(job, "train_with_ray", fake_train)
    return fake


def quick(root: Path, version: str, **kw: Any) -> JobSummary:
    return run_training_job(JobSettings(store=str(root), model=MODEL, version=version, **kw))


def test_stable_moved_by_another_writer_during_the_run_is_not_overwritten(
    tmp_path: Path, untrained: FakeTraining
) -> None:
    from manymodels.store import set_store_aliases

    assert quick(tmp_path, "v0").promoted
    assert not quick(tmp_path, "v1", min_improvement=100.0).promoted  # published, canary only
    # while v2 "trains" (scored against stable v0), someone promotes v1
    untrained.during.append(lambda: set_store_aliases(str(tmp_path), MODEL, {"stable": "v1", "canary": "v1"}))
    moved = quick(tmp_path, "v2")
    assert moved.stable_version == "v0" and not moved.promoted, moved
    assert "stable moved from 'v0' to 'v1' during this run" in moved.reason
    assert aliases(tmp_path) == {"stable": "v1", "canary": "v2"}
    assert moved.train_loss is None  # a NaN loss is reported as null, after publishing, not a crash


def test_a_store_it_cannot_write_fails_before_training(
    tmp_path: Path, untrained: FakeTraining, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fsspec.implementations.local import LocalFileSystem

    def forbidden(self, path, value, **kw):
        raise PermissionError(f"403 Forbidden: {path}")

    monkeypatch.setattr(LocalFileSystem, "pipe_file", forbidden)
    with pytest.raises(PermissionError, match="its identity needs write access"):
        quick(tmp_path, "v0")
    assert untrained.runs == [] and list(tmp_path.iterdir()) == []


def test_a_failed_aliases_write_says_the_version_is_published(
    tmp_path: Path, untrained: FakeTraining, monkeypatch: pytest.MonkeyPatch
) -> None:
    from manymodels.training import job

    def broken(*args, **kw):
        raise OSError("connection reset")

    monkeypatch.setattr(job, "set_store_aliases", broken)
    with pytest.raises(job.AliasesNotSet, match=r"published demo-regressor version v0, but its aliases"):
        quick(tmp_path, "v0")
    assert open_store(str(tmp_path)).list_versions(MODEL) == ["v0"]
