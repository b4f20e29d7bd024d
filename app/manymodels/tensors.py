"""The one input check: every request's tensors against the model's manifest, once, before a runtime.

Decoders (``/predict`` JSON, OIP JSON or binary, a model's processor) only convert; the data plane
calls :func:`check_inputs` on what they produced, so every path refuses the same things with the same
words (HTTP 400), and native runtimes never see a tensor that does not match the manifest.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from manymodels.errors import InvalidRequest
from manymodels.store.manifest import TensorSpec


def check_inputs(
    specs: Sequence[TensorSpec],
    inputs: Mapping[str, np.ndarray],
    *,
    allow_nonfinite: bool,
    max_batch: int,
) -> None:
    """Exactly the declared inputs, each passing :func:`check_tensor`."""
    if not isinstance(inputs, Mapping):
        raise InvalidRequest("inputs must be a mapping of input name to array")
    names = [s.name for s in specs]
    unknown = sorted(set(inputs) - set(names))
    if unknown:
        raise InvalidRequest(f"unknown input(s) {unknown}; expected {names}")
    for spec in specs:
        if spec.name not in inputs:
            raise InvalidRequest(f"missing input '{spec.name}'")
        check_tensor(inputs[spec.name], spec, allow_nonfinite=allow_nonfinite, max_batch=max_batch)


def check_tensor(array: np.ndarray, spec: TensorSpec, *, allow_nonfinite: bool, max_batch: int) -> None:
    """dtype, rank, fixed dimensions, batch limit (a free first dimension), non-empty, finite."""
    if not isinstance(array, np.ndarray):
        raise InvalidRequest(f"input '{spec.name}' must be an array, got {type(array).__name__}")
    if spec.dtype == "bytes":
        if array.dtype.kind not in "SOU":
            raise InvalidRequest(f"input '{spec.name}': expected bytes, got {array.dtype}")
    elif array.dtype != np.dtype(spec.dtype):
        raise InvalidRequest(f"input '{spec.name}': expected {spec.dtype}, got {array.dtype}")
    if array.ndim != len(spec.shape):
        raise InvalidRequest(
            f"input '{spec.name}': expected {len(spec.shape)} dimensions {spec.shape}, "
            f"got shape {list(array.shape)}"
        )
    for axis, (got, want) in enumerate(zip(array.shape, spec.shape, strict=True)):
        if want >= 0 and got != want:
            raise InvalidRequest(
                f"input '{spec.name}': dimension {axis} must be {want}, got {got} "
                f"(expected shape {spec.shape}, got {list(array.shape)})"
            )
    if array.ndim and spec.shape[0] < 0 and array.shape[0] > max_batch:
        raise InvalidRequest(f"input '{spec.name}': batch of {array.shape[0]} exceeds {max_batch}")
    if array.size == 0:
        raise InvalidRequest(f"input '{spec.name}' is empty")
    if array.dtype.kind == "f" and not allow_nonfinite and not np.isfinite(array).all():
        raise InvalidRequest(f"input '{spec.name}' contains NaN or infinity")
