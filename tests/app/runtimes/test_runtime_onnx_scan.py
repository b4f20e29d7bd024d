"""manymodels.runtimes.onnx_scan: the wire-format walk agrees with a full protobuf parse on tensor bytes,
and refuses every external-data location outside the model's folder, wherever the tensor hides."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import GraphProto, TensorProto, helper, numpy_helper

from manymodels.demo.catalog import _init, mlp_onnx
from manymodels.errors import ModelLoadError
from manymodels.runtimes.onnx_scan import scan_onnx


def reference_bytes(path: Path) -> int:
    """The same count from ``onnx.load``: every tensor of the main graph and its nested graphs."""

    def tensors(graph: GraphProto) -> Iterator[TensorProto]:
        yield from graph.initializer
        for sparse in graph.sparse_initializer:
            yield from (sparse.values, sparse.indices)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    yield attr.t
                yield from attr.tensors
                for sparse in [attr.sparse_tensor] * attr.HasField("sparse_tensor") + list(
                    attr.sparse_tensors
                ):
                    yield from (sparse.values, sparse.indices)
                for sub in [attr.g] * attr.HasField("g") + list(attr.graphs):
                    yield from tensors(sub)

    def size(t: TensorProto) -> int:
        if t.data_type == TensorProto.STRING:
            return sum(len(s) for s in t.string_data)
        return np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize * math.prod(t.dims)

    return sum(size(t) for t in tensors(onnx.load(str(path), load_external_data=False).graph))


def const(name: str, array: np.ndarray) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name + "_v"))


def branch(name: str, depth: int) -> GraphProto:
    """A graph with a Constant tensor, nested ``depth`` If levels deep."""
    nodes = [const(f"{name}_c", np.ones((3, 4), np.float16))]
    if depth:
        nodes.append(
            helper.make_node(
                "If",
                ["cond"],
                [f"{name}_o"],
                then_branch=branch(name + "t", depth - 1),
                else_branch=branch(name + "e", depth - 1),
            )
        )
    out = helper.make_tensor_value_info(f"{name}_c", TensorProto.FLOAT16, [3, 4])
    return helper.make_graph(nodes, name, [], [out])


def rich_model() -> onnx.ModelProto:
    """Initializers of several types, a sparse initializer, string data, sparse and tensors-valued
    attributes, and If subgraphs two levels deep."""
    sparse = helper.make_sparse_tensor(
        numpy_helper.from_array(np.arange(5, dtype=np.float32), "sv"),
        numpy_helper.from_array(np.arange(5, dtype=np.int64), "si"),
        [10],
    )
    graph = helper.make_graph(
        [
            const("k", np.zeros((7,), np.int64)),
            helper.make_node("Constant", [], ["sp"], sparse_value=sparse),
            helper.make_node(
                "Custom", [], ["z"], domain="x", many=[numpy_helper.from_array(np.ones(3, np.float64))]
            ),
            helper.make_node("If", ["cond"], ["o"], then_branch=branch("a", 2), else_branch=branch("b", 1)),
        ],
        "main",
        [helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("o", TensorProto.FLOAT16, [3, 4])],
        initializer=[
            numpy_helper.from_array(np.ones((64, 32), np.float32), "w"),
            numpy_helper.from_array(np.ones((5,), np.bool_), "flags"),
            helper.make_tensor("s", TensorProto.STRING, [2], [b"ab", b"cde"]),
        ],
        sparse_initializer=[sparse],
    )
    return helper.make_model(graph)


def write(folder: Path, model: onnx.ModelProto | bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model if isinstance(model, bytes) else model.SerializeToString())
    return path


@pytest.mark.parametrize("hidden", [[64, 10], [64, 256, 10], [64, 1024, 1024, 10]])
def test_mlp_bytes_match_a_full_parse(tmp_path: Path, hidden: list[int]) -> None:
    layers = _init(np.random.default_rng(0), hidden)
    path = write(tmp_path, mlp_onnx(layers, "input", "logits"))
    assert scan_onnx(path) == reference_bytes(path) == sum(w.nbytes + b.nbytes for w, b in layers)


def test_rich_model_bytes_match_a_full_parse(tmp_path: Path) -> None:
    path = write(tmp_path, rich_model())
    expected = reference_bytes(path)
    assert expected > 64 * 32 * 4  # the nested constants and sparse parts are in it
    assert scan_onnx(path) == expected


def test_packed_dims_are_read(tmp_path: Path) -> None:
    # dims [2, 3] packed (protobuf parsers accept both encodings), data_type float, 24 raw bytes
    tensor = b"\x0a\x02\x02\x03" + b"\x10\x01" + b"\x42\x01w" + b"\x4a\x18" + bytes(24)
    graph = b"\x2a" + bytes([len(tensor)]) + tensor
    path = write(tmp_path, b"\x08\x07" + b"\x3a" + bytes([len(graph)]) + graph)
    assert list(onnx.load(str(path)).graph.initializer[0].dims) == [2, 3]
    assert scan_onnx(path) == reference_bytes(path) == 24


def test_mutated_files_are_read_as_protobuf_reads_them_or_refused(tmp_path: Path) -> None:
    """Seeded byte mutations of a model with subgraphs: the walk never fails otherwise than with
    ModelLoadError, and whenever it answers, a full parse gives the same count."""
    good = rich_model().SerializeToString()
    rng = np.random.default_rng(12)
    answered = 0
    for i in range(300):
        data = bytearray(good)
        for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
            data[pos] = int(rng.integers(0, 256))
        path = write(tmp_path / str(i), bytes(data))
        try:
            found = scan_onnx(path)
        except ModelLoadError:
            continue
        try:
            expected = reference_bytes(path)
        except Exception:  # noqa: BLE001 - protobuf refused what the walk accepted: no count to compare
            continue
        assert found == expected, i
        answered += 1
    assert answered > 50


def external(folder: Path, location: str) -> TensorProto:
    tensor = numpy_helper.from_array(np.ones(4, np.float32), "w")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    (folder / "weights.bin").write_bytes(bytes(16))
    return tensor


def model_with(initializers: list[TensorProto] = (), nodes: list[onnx.NodeProto] = ()) -> onnx.ModelProto:
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])
    return helper.make_model(helper.make_graph(list(nodes), "g", [], [out], initializer=list(initializers)))


def test_external_data_inside_the_folder_is_counted_from_dims(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    path = write(tmp_path, model_with([external(tmp_path, "weights.bin")]))
    assert scan_onnx(path) == 16


@pytest.mark.parametrize("location", ["../weights.bin", "/etc/passwd", "sub/w.bin", "a\\b", "..", "", "gone"])
def test_external_data_outside_the_folder_is_refused(tmp_path: Path, location: str) -> None:
    path = write(tmp_path, model_with([external(tmp_path, location)]))
    with pytest.raises(ModelLoadError, match="only plain file names inside"):
        scan_onnx(path)


def test_external_data_in_a_function_or_training_graph_is_checked(tmp_path: Path) -> None:
    bad = external(tmp_path, "../secret.bin")
    node = helper.make_node("Constant", [], ["y"], value=bad)
    function = helper.make_function("f", "fn", [], ["y"], [node], [helper.make_opsetid("", 17)])
    model = model_with()
    model.functions.append(function)
    with pytest.raises(ModelLoadError, match="secret"):
        scan_onnx(write(tmp_path / "fn", model))
    model = model_with()
    model.training_info.add().initialization.CopyFrom(
        helper.make_graph([], "init", [], [], initializer=[bad])
    )
    with pytest.raises(ModelLoadError, match="secret"):
        scan_onnx(write(tmp_path / "training", model))


def test_a_location_hidden_in_a_second_occurrence_of_a_tensor_is_refused(tmp_path: Path) -> None:
    """Protobuf merges two occurrences of a singular field: the first marks the tensor external with a
    good location, the second (no data_location) adds a location ORT would use, the last one."""
    (tmp_path / "m").mkdir()
    good = external(tmp_path / "m", "weights.bin")
    sneaky = TensorProto(name="w")
    sneaky.external_data.add(key="location", value="../secret.bin")
    attr = helper.make_attribute("value", good)
    extra = sneaky.SerializeToString()
    raw_attr = attr.SerializeToString() + b"\x2a" + bytes([len(extra)]) + extra  # field 5 (t) again
    node = helper.make_node("Constant", [], ["y"])
    node.attribute.add().ParseFromString(raw_attr)
    merged = node.attribute[0].t
    assert merged.data_location == TensorProto.EXTERNAL
    assert [e.value for e in merged.external_data] == ["weights.bin", "../secret.bin"]
    with pytest.raises(ModelLoadError, match="secret"):
        scan_onnx(write(tmp_path / "m", model_with(nodes=[node])))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x08\x07not an onnx model at all" * 10,
        b"\x3a\x10\x2a\x05",  # a graph longer than the file
        b"\x3b\x3c",  # a group: no place in ONNX
        b"\x3a\x02\x2a\x80",  # a varint cut short
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, data: bytes) -> None:
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        scan_onnx(write(tmp_path, data))


def field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field."""
    length, prefix = len(payload), b""
    while length >= 0x80:
        prefix += bytes([length & 0x7F | 0x80])
        length >>= 7
    return bytes([number << 3 | 2]) + prefix + bytes([length]) + payload


def test_nesting_beyond_protobufs_limit_is_refused_not_a_crash(tmp_path: Path) -> None:
    graph = b""
    for _ in range(40):  # each level: graph -> node (1) -> attribute (5) -> g (6)
        graph = field(1, field(5, field(6, graph)))
    path = write(tmp_path, field(7, graph))
    with pytest.raises(ModelLoadError, match="nested too deeply"):
        scan_onnx(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        scan_onnx(tmp_path / "gone.onnx")
    with pytest.raises(ModelLoadError, match="cannot read"):
        scan_onnx(tmp_path)  # a directory


def test_symlink_to_outside_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(16))
    folder = tmp_path / "m"
    folder.mkdir()
    os.symlink(secret, folder / "link.bin")
    path = write(folder, model_with([external(folder, "link.bin")]))
    with pytest.raises(ModelLoadError, match="only plain file names inside"):
        scan_onnx(path)
