"""Tensors in and out: JSON nested lists and Open Inference Protocol v2 tensors <-> numpy.

Decoding converts and refuses what cannot be converted (ragged lists, wrong datatype, byte counts
that do not fit the shape); whether the result fits the model is checked once, for every path, by
``manymodels.tensors.check_inputs``.
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
BINARY_HEADER = "inference-header-content-length"
# A declared shape larger than this is refused before any allocation (2**31 elements).
MAX_ELEMENTS = 2**31


def oip_datatype(array: np.ndarray) -> str:
    if array.dtype.kind in "OSU":
        return "BYTES"
    try:
        return NUMPY_TO_OIP[array.dtype.name]
    except KeyError:
        raise InvalidRequest(f"unsupported output dtype {array.dtype.name}") from None


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


def decode_input_data(input_data: Any, specs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], bool]:
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
        inputs[spec.name] = array
    return inputs, single


def encode_outputs(outputs: Mapping[str, np.ndarray], unbatch: bool) -> dict[str, Any]:
    return {name: (value[0] if unbatch else value).tolist() for name, value in outputs.items()}


def split_binary(raw: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    """An OIP body -> (JSON part, binary tensor data), per ``Inference-Header-Content-Length``."""
    if header_length is None:
        return raw, b""
    if not header_length.isdigit() or int(header_length) > len(raw):
        raise InvalidRequest(f"bad {BINARY_HEADER}: {header_length!r}")
    return raw[: int(header_length)], raw[int(header_length) :]


def decode_oip_inputs(
    body: Mapping[str, Any], binary: bytes, specs: list[TensorSpec]
) -> dict[str, np.ndarray]:
    """An OIP request's ``inputs`` (each JSON ``data`` or a slice of ``binary``) -> arrays by name."""
    by_name = {s.name: s for s in specs}
    tensors = body.get("inputs")
    if not isinstance(tensors, list) or not tensors:
        raise InvalidRequest("'inputs' must be a non-empty list")
    inputs, offset = {}, 0
    for tensor in tensors:
        if (
            not isinstance(tensor, dict)
            or not isinstance(tensor.get("name"), str)
            or tensor["name"] not in by_name
        ):
            shown = tensor.get("name") if isinstance(tensor, dict) else tensor
            raise InvalidRequest(f"unknown input {shown!r}; expected {sorted(by_name)}")
        size = parameters(tensor).get("binary_data_size")
        payload = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise InvalidRequest(f"input '{tensor['name']}': bad binary_data_size {size!r}")
            payload, offset = binary[offset : offset + size], offset + size
        inputs[tensor["name"]] = decode_oip_tensor(tensor, by_name[tensor["name"]], payload)
    missing = set(by_name) - set(inputs)
    if missing:
        raise InvalidRequest(f"missing input(s) {sorted(missing)}")
    return inputs


def parameters(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An OIP object's ``parameters`` (absent = empty)."""
    found = entry.get("parameters") or {}
    if not isinstance(found, dict):
        raise InvalidRequest("'parameters' must be a JSON object")
    return found


def decode_oip_tensor(
    tensor: Mapping[str, Any], spec: TensorSpec, binary: bytes | None
) -> np.ndarray:
    """One OIP request input (JSON ``data`` or a binary-extension payload) -> array."""
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
    return array


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
