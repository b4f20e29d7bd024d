"""Scoring an exported ONNX artifact with the task's held-out data, through ONNX Runtime.

The new version and the version behind ``stable`` are scored by the same function on the same
inputs, from their artifact files, so the comparison is between what the server would serve.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnxruntime as ort

from manymodels.training.task import TrainingTask


class EvaluationError(RuntimeError):
    """An artifact cannot be scored with the task's held-out data."""


def predict_onnx(
    artifact: str | Path, inputs: np.ndarray, *, input_name: str, output_name: str
) -> np.ndarray:
    """The artifact's ``output_name`` for ``inputs`` (fed as ``input_name``), on the CPU."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the scores are what the job logs
    session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    have_in = [i.name for i in session.get_inputs()]
    have_out = [o.name for o in session.get_outputs()]
    if have_in != [input_name] or output_name not in have_out:
        raise EvaluationError(
            f"{Path(artifact).name} takes {have_in} and returns {have_out}; the task feeds "
            f"[{input_name!r}] and scores {output_name!r}"
        )
    return session.run([output_name], {input_name: inputs})[0]


def score_artifact(task: TrainingTask, artifact: str | Path, data: tuple[np.ndarray, np.ndarray]) -> float:
    """``task.score`` of the artifact's predictions on ``data`` (held-out inputs and targets)."""
    inputs, targets = data
    predictions = predict_onnx(artifact, inputs, input_name=task.input_name, output_name=task.output_name)
    value = task.score(predictions, targets)
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating | np.integer):
        raise EvaluationError(f"the task's score() returned {value!r}, not a number")
    return float(value)


def is_finite(score: float | None) -> bool:
    return score is not None and math.isfinite(score)
