"""What one training run is asked to do: the job's settings, without importing torch or Ray."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from manymodels.training.task import DEFAULT_TASK


@dataclass(frozen=True)
class Scaling:
    """How many Ray Train workers, and what each one reserves."""

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0


@dataclass(frozen=True)
class JobSettings:
    store: str  # a local path or an fsspec URI
    model: str
    task: str = DEFAULT_TASK
    options: dict[str, Any] = field(default_factory=dict)
    scaling: Scaling = Scaling()
    min_score: float | None = None
    min_improvement: float = 0.0
    version: str | None = None  # None: a UTC timestamp, tYYYYMMDD-HHMMSS
    storage_options: dict[str, Any] = field(default_factory=dict)  # fsspec options for the store
