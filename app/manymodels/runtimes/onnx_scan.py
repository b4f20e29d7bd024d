"""What the loader needs from an ONNX file before ONNX Runtime opens it, read without parsing weights.

Two facts: every external-data location is a plain file inside the model's folder (checked before ORT
would follow it), and how many bytes of tensors the graph holds (the cache budget). Both come from a
walk over the protobuf wire format of the memory-mapped file that skips every field that cannot lead
to a tensor, and every tensor's data: a full ``onnx.load`` copies all the weights into Python objects,
doubling the footprint for a moment and holding the GIL throughout (measured: ~90 ms for a 68 MB model,
during which the replica's event loop stood still).

Protobuf merges repeated occurrences of a singular message field, so one tensor may be spread over
several occurrences; every ``location`` of every occurrence is therefore checked, whatever its
``data_location`` says. Field numbers are those of ``onnx.proto``.
"""

from __future__ import annotations

import math
import mmap
import os
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper

from manymodels.errors import ModelLoadError

# Message kinds, and for each the fields that can lead to a tensor: field number -> kind.
MODEL, GRAPH, NODE, ATTRIBUTE, TENSOR, SPARSE, TRAINING, FUNCTION = range(8)
_CHILDREN: dict[int, dict[int, int]] = {
    MODEL: {7: GRAPH, 20: TRAINING, 25: FUNCTION},
    GRAPH: {1: NODE, 5: TENSOR, 15: SPARSE},  # node, initializer, sparse_initializer
    NODE: {5: ATTRIBUTE},
    # t, g, tensors, graphs, sparse_tensor, sparse_tensors
    ATTRIBUTE: {5: TENSOR, 6: GRAPH, 10: TENSOR, 11: GRAPH, 22: SPARSE, 23: SPARSE},
    SPARSE: {1: TENSOR, 2: TENSOR},  # values, indices
    TRAINING: {1: GRAPH, 2: GRAPH},  # initialization, algorithm
    FUNCTION: {7: NODE, 11: ATTRIBUTE},  # node, attribute_proto
}
# TensorProto fields read here.
_DIMS, _DATA_TYPE, _STRING_DATA, _NAME, _EXTERNAL_DATA, _DATA_LOCATION = 1, 2, 6, 8, 13, 14
_MAX_DEPTH = 100  # levels of messages, as protobuf's own parsers allow
_U64 = 1 << 64
_READ_MAX = 1 << 20  # smaller files are read whole: cheaper than setting up a mapping


class _Malformed(Exception):
    pass


def scan_onnx(path: Path) -> int:
    """Bytes of the tensors in the graph (nested graphs too), after checking every external-data
    location; ModelLoadError if the file is missing, not ONNX, or points outside its folder."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise _Malformed("empty file")
            if size <= _READ_MAX:
                return _Scan(f.read(), str(path.parent)).run()
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return _Scan(data, str(path.parent)).run()
    except FileNotFoundError as exc:
        raise ModelLoadError(f"artifact not found: {path}") from exc
    except OSError as exc:
        raise ModelLoadError(f"cannot read artifact {path}: {exc}") from exc
    except _Malformed as exc:
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: {exc}") from None


class _Scan:
    def __init__(self, data: bytes | mmap.mmap, folder: str) -> None:
        self.data = data
        self.folder = folder
        self.root = ""  # resolved on the first external location: most models have none

    def run(self) -> int:
        return self._message(MODEL, 0, len(self.data), depth=0, counted=False)

    def _message(self, kind: int, start: int, end: int, *, depth: int, counted: bool) -> int:
        """Tensor bytes under one message; ``counted``: inside the main graph (what the budget counts,
        as before: functions and training graphs are checked but not counted)."""
        if depth > _MAX_DEPTH:
            raise _Malformed("messages nested too deeply")
        children = _CHILDREN[kind]
        total = 0
        for field, wire, a, b in self._fields(start, end):
            child = children.get(field)
            if child is None:
                continue
            if wire != 2:
                raise _Malformed(f"field {field} has wire type {wire}")
            inside = counted or (kind == MODEL and child == GRAPH)
            if child == TENSOR:
                size = self._tensor(a, b)
                total += size if inside else 0
            else:
                total += self._message(child, a, b, depth=depth + 1, counted=inside)
        return total

    def _tensor(self, start: int, end: int) -> int:
        dims: list[int] = []
        data_type = external = 0
        string_bytes = 0
        name = b""
        locations: list[bytes] = []
        for field, wire, a, b in self._fields(start, end):
            if field == _DIMS:
                if wire == 0:
                    dims.append(_signed(a, 64))
                elif wire == 2:  # packed
                    pos = a
                    while pos < b:
                        value, pos = self._varint(pos, b)
                        dims.append(_signed(value, 64))
                else:
                    raise _Malformed("bad dims")
            elif field == _DATA_TYPE and wire == 0:
                data_type = _signed(a, 32)
            elif field == _DATA_LOCATION and wire == 0:
                external = _signed(a, 32) == TensorProto.EXTERNAL
            elif field == _STRING_DATA and wire == 2:
                string_bytes += b - a
            elif field == _NAME and wire == 2:
                name = self.data[a:b]
            elif field == _EXTERNAL_DATA and wire == 2:
                entry = dict(self._strings(a, b))
                if entry.get(1) == b"location":
                    locations.append(entry.get(2, b""))
        label = name.decode("utf-8", "replace")
        if external and not locations:
            locations.append(b"")
        for location in locations:
            self._check_location(label, os.fsdecode(location))  # the exact bytes ORT would open
        if data_type == TensorProto.STRING:
            return string_bytes
        itemsize = _ITEMSIZE.get(data_type) or _itemsize(data_type)
        if itemsize is None:
            raise _Malformed(f"tensor {label!r} has unknown data type {data_type}")
        return itemsize * math.prod(dims)

    def _check_location(self, tensor: str, loc: str) -> None:
        """ONNX external-data locations have had path traversal CVEs; ORT would follow ``../`` or an
        absolute path, so anything but a bare file name that resolves inside the folder is refused."""
        self.root = self.root or os.path.realpath(self.folder)
        plain = loc and loc not in (".", "..") and "/" not in loc and "\\" not in loc and "\0" not in loc
        target = os.path.realpath(os.path.join(self.root, loc)) if plain else ""
        # realpath also catches a symlink inside the folder that points out of it.
        if not plain or os.path.dirname(target) != self.root or not os.path.isfile(target):
            raise ModelLoadError(
                f"tensor {tensor!r} has external data location {loc!r}: only plain file "
                f"names inside the model's folder are allowed"
            )

    def _strings(self, start: int, end: int) -> list[tuple[int, bytes]]:
        return [(field, self.data[a:b]) for field, wire, a, b in self._fields(start, end) if wire == 2]

    def _fields(self, start: int, end: int) -> list[tuple[int, int, int, int]]:
        """(field number, wire type, value, 0) for varints; (field, 2, start, end) for length-delimited
        fields; fixed-width fields are skipped past."""
        data, out, pos = self.data, [], start
        while pos < end:
            key = data[pos]  # one-byte keys and lengths (the common case) skip the general decoder
            if key < 0x80:
                pos += 1
            else:
                key, pos = self._varint(pos, end)
            field, wire = key >> 3, key & 7
            if field == 0:
                raise _Malformed("field number 0")
            if wire == 0:
                value, pos = self._varint(pos, end)
                out.append((field, 0, value, 0))
            elif wire == 2:
                length = data[pos] if pos < end else 0x80
                if length < 0x80:
                    pos += 1
                else:
                    length, pos = self._varint(pos, end)
                if length > end - pos:
                    raise _Malformed("truncated field")
                out.append((field, 2, pos, pos + length))
                pos += length
            elif wire in (1, 5):
                pos += 8 if wire == 1 else 4
                if pos > end:
                    raise _Malformed("truncated field")
            else:  # groups (3, 4) have no place in ONNX; 6 and 7 do not exist
                raise _Malformed(f"wire type {wire}")
        return out

    def _varint(self, pos: int, end: int) -> tuple[int, int]:
        data = self.data
        result = shift = 0
        while pos < end:
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                return result % _U64, pos
            shift += 7
            if shift >= 70:
                break
        raise _Malformed("bad varint")


def _signed(value: int, bits: int) -> int:
    """A varint as protobuf reads it into an int32/int64 field: truncated, two's complement."""
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >> (bits - 1) else value


_ITEMSIZE: dict[int, int] = {}


def _itemsize(data_type: int) -> int | None:
    try:
        size = np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    _ITEMSIZE[data_type] = size  # a few dozen types at most
    return size
