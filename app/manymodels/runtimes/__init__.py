"""Runtimes: turn a verified artifact + manifest into a :class:`LoadedModel`.

``load_model`` is the only entry point the cache needs; it picks the runtime from
``manifest.runtime``. The torch runtime is imported lazily because torch is an optional extra.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from manymodels.errors import ModelLoadError
from manymodels.runtimes.base import LoadedModel, RuntimeSettings, available_devices, require_device
from manymodels.store.manifest import ModelManifest

__all__ = ["LoadedModel", "RuntimeSettings", "available_devices", "load_model", "require_device"]


def load_model(
    manifest: ModelManifest,
    artifact_path: Path,
    settings: RuntimeSettings,
    *,
    module_factory: Callable[[], Any] | None = None,
) -> LoadedModel:
    """Load one model version; raises :class:`ModelLoadError` with the model named on failure.

    ``module_factory`` builds the ``torch.nn.Module`` a ``torch_state_dict`` artifact's weights are
    loaded into (its class comes from the config, i.e. the image, never from the store).
    """
    if manifest.runtime == "onnx":
        if manifest.format != "onnx":
            raise ModelLoadError(
                f"{manifest.name}:{manifest.version}: runtime onnx needs format onnx, "
                f"got {manifest.format!r}"
            )
        from manymodels.runtimes.onnx import OnnxModel

        return OnnxModel(manifest, Path(artifact_path), settings)
    if manifest.runtime == "torch":
        from manymodels.runtimes.torch import TorchModel

        return TorchModel(manifest, Path(artifact_path), settings, module_factory=module_factory)
    raise ModelLoadError(
        f"{manifest.name}:{manifest.version}: unknown runtime {manifest.runtime!r}"
    )
