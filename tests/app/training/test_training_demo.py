"""DemoTask: deterministic data from its seed, held-out rows from the same function, R^2 score."""

from __future__ import annotations

import numpy as np
import torch

from manymodels.training.demo import HELD_OUT_ROWS, DemoTask


def test_rows_depend_on_the_seed_only() -> None:
    a, b = DemoTask({"samples": 64}), DemoTask({"samples": 64})
    xa, ya = a.train_dataset().tensors
    xb, yb = b.train_dataset().tensors
    assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = DemoTask({"samples": 64, "seed": 1}).train_dataset().tensors[0]
    assert not torch.equal(xa, other)
    x, y = a.evaluation_data()
    assert x.shape == (HELD_OUT_ROWS, 8) and y.shape == (HELD_OUT_ROWS, 1) and x.dtype == np.float32
    assert not np.array_equal(x[:64], xa.numpy())  # held-out rows are not training rows


def test_score_is_r_squared() -> None:
    task = DemoTask({})
    _, y = task.evaluation_data()
    assert task.score(y.copy(), y) == 1.0
    assert abs(task.score(np.full_like(y, y.mean()), y)) < 1e-6
    assert task.score(-y, y) < 0
