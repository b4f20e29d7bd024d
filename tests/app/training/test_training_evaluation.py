"""Scoring exported artifacts: the task's score of ONNX Runtime's predictions; mismatches refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from manymodels.training.demo import DemoTask
from manymodels.training.evaluation import EvaluationError, score_artifact
from manymodels.training.export import export_onnx


def test_score_is_the_tasks_score_of_the_exported_model(tmp_path: Path) -> None:
    task = DemoTask({"features": 4, "hidden": 8})
    torch.manual_seed(0)
    model = task.build_model()
    path = tmp_path / "model.onnx"
    export_onnx(model, task.example_input(), path, input_name="input", output_name="output")
    x, y = task.evaluation_data()
    with torch.no_grad():
        want = task.score(model(torch.from_numpy(x)).numpy(), y)
    assert score_artifact(task, path, (x, y)) == pytest.approx(want, rel=1e-5)


def test_an_artifact_with_other_tensor_names_cannot_be_scored(tmp_path: Path) -> None:
    task = DemoTask({"features": 4})
    path = tmp_path / "model.onnx"
    export_onnx(task.build_model(), task.example_input(), path, input_name="x", output_name="y")
    with pytest.raises(EvaluationError, match=r"takes \['x'\] and returns \['y'\]"):
        score_artifact(task, path, task.evaluation_data())


def test_a_score_that_is_not_a_number_is_refused(tmp_path: Path) -> None:
    class Broken(DemoTask):
        def score(self, predictions: np.ndarray, targets: np.ndarray) -> float:
            return "good"  # type: ignore[return-value]

    task = Broken({"features": 4})
    path = tmp_path / "model.onnx"
    export_onnx(task.build_model(), task.example_input(), path, input_name="input", output_name="output")
    with pytest.raises(EvaluationError, match="not a number"):
        score_artifact(task, path, task.evaluation_data())
