"""The common runtime interface: settings, a loaded model, and input checks shared by runtimes."""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from manymodels.errors import InvalidRequest
from manymodels.store.manifest import ModelManifest, TensorSpec


class RuntimeSettings(BaseModel):
    """How runtimes place and thread a model; one object for every runtime."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # One thread each by default: a replica holds many sessions, and ORT/torch default to one
    # thread per core *per session*, which oversubscribes the CPU badly.
    intra_op_threads: int = Field(default=1, ge=1)
    inter_op_threads: int = Field(default=1, ge=1)


class LoadedModel(ABC):
    """One model version resident in memory. ``infer`` may be called from many threads at once."""

    manifest: ModelManifest
    device: str  # "cpu" or "cuda"

    def __init__(self, manifest: ModelManifest, device: str) -> None:
        self.manifest = manifest
        self.device = device

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; outputs are keyed by ``manifest.outputs`` names, in that order."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Deterministic estimate of the resident size, used by the cache budget."""

    @abstractmethod
    def close(self) -> None:
        """Release the model's memory; ``infer`` must not be called afterwards."""

    def __repr__(self) -> str:
        m = self.manifest
        return f"<{type(self).__name__} {m.name}:{m.version} on {self.device}>"


def check_inputs(manifest: ModelManifest, inputs: dict[str, np.ndarray]) -> None:
    """Reject inputs that do not match the manifest, before they reach native code.

    Native runtimes report such mistakes as opaque internal errors; checking here turns them
    into :class:`InvalidRequest` (HTTP 400) with the offending tensor named.
    """
    if not isinstance(inputs, dict):
        raise InvalidRequest("inputs must be a mapping of input name to array")
    expected = {spec.name for spec in manifest.inputs}
    unknown = sorted(set(inputs) - expected)
    if unknown:
        raise InvalidRequest(f"unknown input(s) {unknown}; model expects {sorted(expected)}")
    for spec in manifest.inputs:
        if spec.name not in inputs:
            raise InvalidRequest(f"missing input {spec.name!r}")
        check_tensor(spec, inputs[spec.name])


def check_tensor(spec: TensorSpec, value: np.ndarray) -> None:
    if not isinstance(value, np.ndarray):
        raise InvalidRequest(f"input {spec.name!r} must be a numpy array")
    if spec.dtype == "bytes":
        if value.dtype.kind not in ("S", "O", "U"):
            raise InvalidRequest(f"input {spec.name!r} must hold bytes, got {value.dtype}")
    elif value.dtype != np.dtype(spec.dtype):
        raise InvalidRequest(f"input {spec.name!r} must be {spec.dtype}, got {value.dtype}")
    if value.ndim != len(spec.shape):
        raise InvalidRequest(
            f"input {spec.name!r} must have {len(spec.shape)} dimensions {spec.shape}, "
            f"got shape {list(value.shape)}"
        )
    for got, want in zip(value.shape, spec.shape, strict=True):
        if want != -1 and got != want:
            raise InvalidRequest(
                f"input {spec.name!r} must have shape {spec.shape}, got {list(value.shape)}"
            )


def available_devices() -> list[str]:
    """Always ``cpu``, plus ``cuda`` when onnxruntime or torch can use a GPU here."""
    return list(_devices())


@functools.lru_cache(maxsize=1)
def _devices() -> tuple[str, ...]:
    # Cached: providers and drivers do not change while a process runs.
    import onnxruntime as ort

    if "CUDAExecutionProvider" in ort.get_available_providers() or _torch_cuda():
        return ("cpu", "cuda")
    return ("cpu",)


def _torch_cuda() -> bool:
    # Importing torch costs seconds and hundreds of MB; skip it on hosts without an NVIDIA driver.
    if not os.path.exists("/dev/nvidiactl"):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())
