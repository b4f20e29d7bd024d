"""``DemoTask``: the built-in task, a small MLP regressor on a synthetic dataset it generates.

The target is a fixed smooth nonlinear function of ``features`` Gaussian inputs plus noise, drawn
from ``seed``, so every worker and every run sees the same rows, and the held-out rows come from
the same function. The score is R^2 on the held-out rows (1 is perfect, 0 is as good as predicting
the mean; an untrained model is usually below 0), so ``--min-score`` reads naturally.

Options (``--options-json``), all optional: ``epochs`` (20), ``lr`` (0.01), ``hidden`` (32),
``batch_size`` (64), ``samples`` (2048 training rows), ``features`` (8), ``seed`` (0) and
``noise`` (0.1). A deliberately worse model: ``{"epochs": 0}`` or a tiny ``lr``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from manymodels.training.task import TrainingTask

HELD_OUT_ROWS = 512
_DEFAULTS: dict[str, int | float] = {
    "epochs": 20,
    "lr": 0.01,
    "hidden": 32,
    "batch_size": 64,
    "samples": 2048,
    "features": 8,
    "seed": 0,
    "noise": 0.1,
}
_INTEGERS = ("epochs", "hidden", "batch_size", "samples", "features", "seed")


class DemoTask(TrainingTask):
    """Regression of ``y = sin(x @ a) @ b + noise`` with a one-hidden-layer MLP."""

    input_name = "input"
    output_name = "output"

    def __init__(self, options: Mapping[str, Any]) -> None:
        super().__init__(options)
        unknown = sorted(set(self.options) - set(_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown}; DemoTask takes {sorted(_DEFAULTS)}")
        values = {**_DEFAULTS, **self.options}
        for key in _INTEGERS:
            if isinstance(values[key], bool) or not isinstance(values[key], int):
                raise ValueError(f"option {key!r} must be an integer, got {values[key]!r}")
        for key in ("lr", "noise"):
            if isinstance(values[key], bool) or not isinstance(values[key], int | float):
                raise ValueError(f"option {key!r} must be a number, got {values[key]!r}")
        if min(values["hidden"], values["samples"], values["features"]) < 1 or values["noise"] < 0:
            raise ValueError("options hidden, samples and features must be >= 1 and noise >= 0")
        self.epochs = values["epochs"]
        self.lr = float(values["lr"])
        self.batch_size = values["batch_size"]
        self.hidden = values["hidden"]
        self.samples = values["samples"]
        self.features = values["features"]
        self.seed = values["seed"]
        self.noise = float(values["noise"])

    def _rows(self, count: int, stream: int) -> tuple[np.ndarray, np.ndarray]:
        # The function (a, b) depends on the seed only; training and held-out rows on their stream.
        shape = np.random.default_rng([self.seed, 0])
        a = shape.standard_normal((self.features, 16)) / np.sqrt(self.features)
        b = shape.standard_normal((16, 1)) / 2.0
        rng = np.random.default_rng([self.seed, stream])
        x = rng.standard_normal((count, self.features))
        y = np.sin(x @ a) @ b + self.noise * rng.standard_normal((count, 1))
        return x.astype(np.float32), y.astype(np.float32)

    def build_model(self) -> torch.nn.Module:
        return torch.nn.Sequential(
            torch.nn.Linear(self.features, self.hidden),
            torch.nn.Tanh(),
            torch.nn.Linear(self.hidden, 1),
        )

    def train_dataset(self) -> torch.utils.data.Dataset:
        x, y = self._rows(self.samples, stream=1)
        return torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.mse_loss(outputs, targets)

    def evaluation_data(self) -> tuple[np.ndarray, np.ndarray]:
        return self._rows(HELD_OUT_ROWS, stream=2)

    def score(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        """R^2 of the predictions."""
        residual = float(np.sum((targets - predictions.reshape(targets.shape)) ** 2))
        total = float(np.sum((targets - targets.mean()) ** 2))
        return 1.0 - residual / total

    def description(self) -> str:
        return (
            f"DemoTask MLP {self.features}-{self.hidden}-1, {self.epochs} epochs, lr {self.lr}, "
            f"seed {self.seed}"
        )
