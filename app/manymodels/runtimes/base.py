"""The common runtime interface: settings, a loaded model, and input checks shared by runtimes."""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from manymodels.errors import ConfigurationError
from manymodels.store.manifest import ModelManifest


class RuntimeSettings(BaseModel):
    """How runtimes place and thread a model; one object for every runtime."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: Literal["auto", "cpu", "cuda"] = "auto"
    # One thread each by default: a replica holds many sessions, and ORT/torch default to one
    # thread per core *per session*, which oversubscribes the CPU badly.
    intra_op_threads: int = Field(default=1, ge=1)
    inter_op_threads: int = Field(default=1, ge=1)
    # Memory under churn (bench/memory.py): the defaults keep a replica's RSS near the cache budget
    # while models are loaded and closed all the time; see runtimes/onnx.py and process_memory.py.
    cpu_mem_arena: bool = Field(
        default=False,
        description="ONNX Runtime's per-session CPU arena: keeps each session's largest activations "
        "allocated between runs (unaccounted memory); off costs <= 3% on large models",
    )
    heap_trim_interval_s: float = Field(
        default=1.0,
        ge=0,
        description="after models close, return freed heap to the OS (glibc malloc_trim) at most "
        "this often; 0 = never. > 0 at a replica's start also pins glibc's mmap threshold at 128 KiB",
    )


class LoadedModel(ABC):
    """One model version resident in memory. ``infer`` may be called from many threads at once."""

    manifest: ModelManifest
    device: str  # "cpu" or "cuda"

    def __init__(self, manifest: ModelManifest, device: str) -> None:
        self.manifest = manifest
        self.device = device

    @abstractmethod
    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model; outputs are keyed by ``manifest.outputs`` names, in that order.

        ``inputs`` have passed ``manymodels.tensors.check_inputs`` (the caller's job, once per
        request); a failure here is the model's, not the client's. Raises
        ``InferenceError`` (after ``close`` too)."""

    @abstractmethod
    def memory_bytes(self) -> int:
        """Deterministic estimate of the resident size, used by the cache budget."""

    @abstractmethod
    def close(self) -> None:
        """Release the model's memory; ``infer`` must not be called afterwards."""

    def __repr__(self) -> str:
        m = self.manifest
        return f"<{type(self).__name__} {m.name}:{m.version} on {self.device}>"


def available_devices() -> list[str]:
    """Always ``cpu``, plus ``cuda`` when onnxruntime or torch can use a GPU here."""
    return list(_devices())


def require_device(settings: RuntimeSettings) -> None:
    """Refuse ``device: cuda`` up front on a host where no runtime can use a GPU: a replica fails at
    start instead of every load failing later (the runtimes still check each model: a CUDA provider
    can be listed yet unable to start). ``auto`` is never refused."""
    if settings.device == "cuda" and "cuda" not in available_devices():
        raise ConfigurationError(
            "runtime.device is cuda but neither onnxruntime (no CUDAExecutionProvider) nor torch can "
            "use a GPU on this host: set runtime.device to auto or cpu, or schedule on a GPU node"
        )


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
