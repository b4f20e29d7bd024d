"""Loading a task by import path: every way it can be wrong is one error naming the path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from manymodels.training.demo import DemoTask
from manymodels.training.evaluation import score_artifact
from manymodels.training.export import export_onnx
from manymodels.training.task import DEFAULT_TASK, TaskError, load_task


class NeedsTheirOptions(DemoTask):
    def __init__(self, options: dict[str, Any]) -> None:
        super().__init__({})
        if "bucket" not in options:
            raise ValueError("option 'bucket' is required")


class BadEpochs(DemoTask):
    epochs = -1  # type: ignore[assignment]

    def __init__(self, options: dict[str, Any]) -> None:
        pass  # keeps the class attribute


class SameNames(DemoTask):
    output_name = "input"


def test_the_default_task_loads_with_its_options() -> None:
    task = load_task(DEFAULT_TASK, {"epochs": 3, "lr": 0.05})
    assert isinstance(task, DemoTask) and task.epochs == 3 and task.lr == 0.05


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("not a path", "must look like 'package.module:ClassName'"),
        ("no_such_package.tasks:Task", "cannot import 'no_such_package.tasks'"),
        ("manymodels.training.demo:NoSuchTask", "has no attribute 'NoSuchTask'"),
        ("manymodels.training.task:TaskError", "not a subclass of manymodels.training.task.TrainingTask"),
        ("manymodels.training.task:DEFAULT_TASK", "not a subclass"),
        (
            "manymodels.training.task:TrainingTask",
            "does not implement build_model, evaluation_data, loss, score, train_dataset",
        ),
    ],
)
def test_a_bad_import_path_names_itself(path: str, message: str) -> None:
    with pytest.raises(TaskError, match="training task") as caught:
        load_task(path, {})
    assert repr(path) in str(caught.value) and message in str(caught.value)


def test_bad_options_and_attributes_name_the_task() -> None:
    here = __name__
    with pytest.raises(TaskError, match=r"NeedsTheirOptions'.*option 'bucket' is required"):
        load_task(f"{here}:NeedsTheirOptions", {})
    with pytest.raises(TaskError, match="epochs must be an integer >= 0"):
        load_task(f"{here}:BadEpochs", {})
    with pytest.raises(TaskError, match="input_name and output_name are both 'input'"):
        load_task(f"{here}:SameNames", {})
    with pytest.raises(TaskError, match=r"unknown option\(s\) \['epoch'\]"):
        load_task(DEFAULT_TASK, {"epoch": 3})
    with pytest.raises(TaskError, match="option 'hidden' must be an integer"):
        load_task(DEFAULT_TASK, {"hidden": 2.5})


def test_the_documented_example_task_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # docs/training.md's "Writing your own task" example, as a module, through the whole contract
    doc = (Path(__file__).parents[3] / "docs" / "training.md").read_text()
    section = doc.split("## Writing your own task", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "doc_churn_task.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    task = load_task("doc_churn_task:ChurnTask", {"epochs": 3})
    assert task.epochs == 3 and task.input_name == "features"
    model = task.build_model()
    inputs, targets = task.train_dataset()[:8]
    assert task.loss(model(inputs), targets).ndim == 0
    path = tmp_path / "model.onnx"
    export_onnx(model, task.example_input(), path, input_name=task.input_name, output_name=task.output_name)
    assert 0.0 <= score_artifact(task, path, task.evaluation_data()) <= 1.0
