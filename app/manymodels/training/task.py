"""The extension point of the training job: a ``TrainingTask`` says what to train and how to judge it.

The job (``python -m manymodels.training --task package.module:ClassName``) imports the class by
path, like processors, so the code ships in the image and never comes from the model store. The
framework owns everything around the task: the Ray Train ``TorchTrainer`` and its data-parallel
loop, the ONNX export, the comparison with the version behind ``stable``, publishing and aliases.

Writing one
-----------
Subclass :class:`TrainingTask` and implement five methods::

    # mycompany/training.py  (a module shipped in the image)
    import numpy as np
    import torch
    from manymodels.training.task import TrainingTask

    class ChurnTask(TrainingTask):
        def __init__(self, options):
            super().__init__(options)
            self.epochs = int(self.options.get("epochs", 10))   # validate options here

        def build_model(self):
            return torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))

        def train_dataset(self):
            x, y = load_rows("train")                          # your data, as float32 tensors
            return torch.utils.data.TensorDataset(x, y)

        def loss(self, outputs, targets):
            return torch.nn.functional.binary_cross_entropy_with_logits(outputs, targets)

        def evaluation_data(self):
            x, y = load_rows("held-out")
            return x.numpy(), y.numpy()

        def score(self, predictions, targets):                  # higher is better
            return float(((predictions > 0) == (targets > 0.5)).mean())

Rules
-----
* ``__init__(options)`` gets the ``--options-json`` object; validate it here and raise
  ``ValueError`` on a bad option: the job fails before it starts Ray.
* The task is built once in the driver and once in every Ray Train worker, so it must be cheap to
  construct and deterministic: ``build_model`` and ``train_dataset`` give every worker the same
  model and the same rows (seed your data generation). The framework shards the rows across the
  workers (a ``DistributedSampler``), wraps the model for data-parallel training (DDP) and moves
  both to the worker's GPU with ``--use-gpu``.
* ``train_dataset`` yields ``(input, target)`` pairs; ``loss(model(input_batch), target_batch)``
  is minimised with ``optimizer`` (Adam, ``lr`` attribute, by default) for ``epochs`` passes of
  ``batch_size`` rows per worker.
* The model takes one float tensor ``[batch, ...]`` and returns one tensor; it is exported to ONNX
  with a dynamic batch dimension (``input_name`` -> ``output_name``), so the server can batch it.
  ``example_input`` (default: the first training row) traces the export.
* ``evaluation_data`` is held-out ``(inputs, targets)`` as numpy arrays; the framework runs the
  EXPORTED artifact of the new version and of the version behind ``stable`` through ONNX Runtime
  on the same inputs and calls ``score(predictions, targets)`` for each: a float, higher is better.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from manymodels.imports import import_object
from manymodels.store.names import is_valid_name

if TYPE_CHECKING:
    import numpy as np
    import torch

DEFAULT_TASK = "manymodels.training.demo:DemoTask"


class TaskError(ValueError):
    """The task named by ``--task`` cannot be used; the message names its import path."""


class TrainingTask(ABC):
    """What to train, on what data, and how to score the exported result. Subclass it."""

    #: passes over the training rows; 0 exports the freshly initialised model
    epochs: int = 10
    #: rows per step on each worker
    batch_size: int = 64
    #: learning rate of the default optimizer
    lr: float = 1e-3
    #: tensor names in the exported ONNX graph and the published manifest
    input_name: str = "input"
    output_name: str = "output"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.options = dict(options)

    @abstractmethod
    def build_model(self) -> torch.nn.Module:
        """A fresh, untrained model (the framework seeds torch first, so every worker gets the same)."""

    @abstractmethod
    def train_dataset(self) -> torch.utils.data.Dataset:
        """The training rows, ``(input, target)`` pairs; the same on every worker."""

    @abstractmethod
    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The scalar loss of one batch."""

    @abstractmethod
    def evaluation_data(self) -> tuple[np.ndarray, np.ndarray]:
        """Held-out ``(inputs, targets)``; inputs are fed to the exported model as they are."""

    @abstractmethod
    def score(self, predictions: np.ndarray, targets: np.ndarray) -> float:
        """How good ``predictions`` (the model's output on the held-out inputs) are; higher is better."""

    def optimizer(self, parameters: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
        import torch

        return torch.optim.Adam(parameters, lr=self.lr)

    def example_input(self) -> torch.Tensor:
        """One batch to trace the export with; the batch dimension is exported as dynamic."""
        first = self.train_dataset()[0][0]
        return first.unsqueeze(0)

    def description(self) -> str:
        """Written into the published manifest's ``description``."""
        return f"trained by {type(self).__module__}.{type(self).__qualname__}"


def load_task(import_path: str, options: Mapping[str, Any]) -> TrainingTask:
    """Import the task class and build it with ``options``; every problem is a TaskError naming the path."""
    try:
        cls = import_object(import_path, "training task")
    except ValueError as exc:
        raise TaskError(str(exc)) from None
    where = f"training task {import_path!r}"
    if not (isinstance(cls, type) and issubclass(cls, TrainingTask)):
        raise TaskError(f"{where} is {cls!r}, not a subclass of manymodels.training.task.TrainingTask")
    missing = sorted(getattr(cls, "__abstractmethods__", ()))
    if missing:
        raise TaskError(f"{where} does not implement {', '.join(missing)}")
    try:
        task = cls(dict(options))
    except (ValueError, TypeError, KeyError) as exc:
        raise TaskError(f"{where}: bad options {dict(options)!r}: {exc}") from exc
    _check_attributes(task, where)
    return task


def _check_attributes(task: TrainingTask, where: str) -> None:
    epochs, batch, lr = task.epochs, task.batch_size, task.lr
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise TaskError(f"{where}: epochs must be an integer >= 0, got {epochs!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise TaskError(f"{where}: batch_size must be an integer >= 1, got {batch!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or lr < 0:
        raise TaskError(f"{where}: lr must be a finite number >= 0, got {lr!r}")
    for attr in ("input_name", "output_name"):
        name = getattr(task, attr)
        if not is_valid_name(name):
            raise TaskError(f"{where}: {attr} {name!r} must be 1-128 characters from A-Z a-z 0-9 . _ -")
    if task.input_name == task.output_name:
        raise TaskError(f"{where}: input_name and output_name are both {task.input_name!r}")
