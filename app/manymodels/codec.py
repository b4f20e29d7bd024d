"""Tensors in and out: JSON nested lists and Open Inference Protocol v2 tensors <-> numpy.

Every check that protects a model from bad input lives here (dtype, rank, fixed dimensions, batch size,
NaN/inf), so ``/predict`` and ``/v2/.../infer`` refuse the same things with the same messages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from manymodels.errors import InvalidRequest
from manymodels.store.manifest import TensorSpec

# OIP datatype <-> numpy dtype name (the manifest uses numpy names).
OIP_TO_NUMPY = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "bytes",
}
NUMPY_TO_OIP = {v: k for k, v in OIP_TO_NUMPY.items()}
# A declared shape larger than this is refused before any allocation (2**31 elements).
MAX_ELEMENTS = 2**31


def oip_datatype(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return NUMPY_TO_OIP[array.dtype.name]
    except KeyError:
        raise InvalidRequest(f"unsupported output dtype {array.dtype.name}") from None


def check_tensor(
    array: np.ndarray, spec: TensorSpec, *, allow_nonfinite: bool, max_batch: int
) -> np.ndarray:
    """Validate one input against its manifest spec; returns it (possibly cast to the spec's dtype)."""
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
    return array


def _to_array(value: Any, spec: TensorSpec) -> np.ndarray:
    if spec.dtype == "bytes":
        raise InvalidRequest(f"input '{spec.name}' is BYTES: send it through the OIP endpoint")
    try:
        array = np.asarray(value)
    except ValueError as exc:  # ragged nested lists
        raise InvalidRequest(f"input '{spec.name}': not a rectangular array ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise InvalidRequest(
            f"input '{spec.name}': expected numbers of type {spec.dtype}, got {array.dtype.kind!r} data"
        )
    target = np.dtype(spec.dtype)
    if (array.dtype.kind == "f" and target.kind in "iub") and (
        not np.isfinite(array).all() or not np.array_equal(array, np.round(array))
    ):
        raise InvalidRequest(f"input '{spec.name}': expected integers ({spec.dtype})")
    if target.kind in "iu" and array.size:
        info = np.iinfo(target)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidRequest(
                f"input '{spec.name}': values outside the range of {spec.dtype} "
                f"[{info.min}, {info.max}]"
            )
    return array.astype(target, copy=False)


def decode_input_data(
    input_data: Any, specs: list[TensorSpec], *, allow_nonfinite: bool, max_batch: int
) -> tuple[dict[str, np.ndarray], bool]:
    """``/predict``'s ``input_data`` -> model inputs.

    Accepts a nested list for a one-input model, or ``{input name: nested list}``. A single sample
    (the spec's rank minus the batch dimension) is batched and the flag returned says to unbatch.
    """
    if isinstance(input_data, Mapping):
        values = dict(input_data)
    elif len(specs) == 1:
        values = {specs[0].name: input_data}
    else:
        names = ", ".join(s.name for s in specs)
        raise InvalidRequest(f"this model has several inputs ({names}): send {{name: values}}")
    unknown = set(values) - {s.name for s in specs}
    if unknown:
        raise InvalidRequest(
            f"unknown input(s) {sorted(unknown)}; expected {[s.name for s in specs]}"
        )
    inputs: dict[str, np.ndarray] = {}
    single = False
    for spec in specs:
        if spec.name not in values:
            raise InvalidRequest(f"missing input '{spec.name}'")
        array = _to_array(values[spec.name], spec)
        if spec.shape and spec.shape[0] < 0 and array.ndim == len(spec.shape) - 1:
            array, single = array[np.newaxis, ...], True
        inputs[spec.name] = check_tensor(
            array, spec, allow_nonfinite=allow_nonfinite, max_batch=max_batch
        )
    return inputs, single


def encode_outputs(outputs: Mapping[str, np.ndarray], unbatch: bool) -> dict[str, Any]:
    return {name: (value[0] if unbatch else value).tolist() for name, value in outputs.items()}


def decode_oip_tensor(
    tensor: Mapping[str, Any],
    spec: TensorSpec,
    binary: bytes | None,
    *,
    allow_nonfinite: bool,
    max_batch: int,
) -> np.ndarray:
    """One OIP request input (JSON ``data`` or a binary-extension payload) -> validated array."""
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidRequest(
            f"input '{spec.name}': 'shape' must be a list of non-negative integers"
        )
    datatype = tensor.get("datatype")
    if datatype not in OIP_TO_NUMPY:
        raise InvalidRequest(f"input '{spec.name}': unknown datatype {datatype!r}")
    if OIP_TO_NUMPY[datatype] != spec.dtype:
        raise InvalidRequest(
            f"input '{spec.name}': datatype {datatype} does not match the model's "
            f"{NUMPY_TO_OIP.get(spec.dtype, spec.dtype)}"
        )
    count = math.prod(shape)  # Python ints: a huge shape must not wrap around to a small count
    if count > MAX_ELEMENTS:
        raise InvalidRequest(f"input '{spec.name}': shape {shape} has too many elements")
    if binary is not None:
        dtype = np.dtype(spec.dtype)
        if len(binary) != count * dtype.itemsize:
            raise InvalidRequest(
                f"input '{spec.name}': {len(binary)} bytes of binary data do not fit shape {shape} "
                f"of {datatype}"
            )
        array = np.frombuffer(binary, dtype=dtype).reshape(shape)
    else:
        if "data" not in tensor:
            raise InvalidRequest(f"input '{spec.name}': missing 'data'")
        flat = _to_array(tensor["data"], spec).reshape(-1)
        if flat.size != count:
            raise InvalidRequest(
                f"input '{spec.name}': {flat.size} values do not fit shape {shape}"
            )
        array = flat.reshape(shape)
    return check_tensor(array, spec, allow_nonfinite=allow_nonfinite, max_batch=max_batch)


def encode_oip_output(name: str, value: np.ndarray, binary: bool) -> tuple[dict[str, Any], bytes]:
    """-> (the JSON part, binary payload or b'' when sent as JSON data)."""
    entry: dict[str, Any] = {
        "name": name,
        "datatype": oip_datatype(value),
        "shape": list(value.shape),
    }
    if binary and entry["datatype"] != "BYTES":
        payload = np.ascontiguousarray(value).tobytes()
        entry["parameters"] = {"binary_data_size": len(payload)}
        return entry, payload
    entry["data"] = value.reshape(-1).tolist()
    return entry, b""
