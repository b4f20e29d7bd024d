"""ONNX export: a dynamic batch dimension, manifest tensors read from the graph, same answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from manymodels.store.manifest import TensorSpec
from manymodels.training.evaluation import predict_onnx
from manymodels.training.export import export_onnx


def test_export_has_a_dynamic_batch_and_answers_like_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))
    path = tmp_path / "model.onnx"
    inputs, outputs = export_onnx(model, torch.zeros(1, 6), path, input_name="features", output_name="scores")
    assert inputs == [TensorSpec(name="features", dtype="float32", shape=[-1, 6])]
    assert outputs == [TensorSpec(name="scores", dtype="float32", shape=[-1, 3])]
    rows = np.random.default_rng(1).standard_normal((5, 6)).astype(np.float32)  # traced with 1 row
    got = predict_onnx(path, rows, input_name="features", output_name="scores")
    with torch.no_grad():
        want = model(torch.from_numpy(rows)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
