"""manymodels.codec: JSON / OIP tensors <-> numpy, and every check that guards a model's inputs."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from manymodels.codec import (
    decode_input_data,
    decode_oip_tensor,
    encode_oip_output,
    encode_outputs,
    oip_datatype,
)
from manymodels.errors import InvalidRequest
from manymodels.store.manifest import TensorSpec
from manymodels.tensors import check_inputs

FEATURES = TensorSpec(name="input", dtype="float32", shape=[-1, 4])
IDS = TensorSpec(name="ids", dtype="int64", shape=[-1, 3])
MASK = TensorSpec(name="mask", dtype="float32", shape=[-1, 3])
FIXED = TensorSpec(name="image", dtype="float32", shape=[2, 3])  # no batch dimension
SMALL_INTS = TensorSpec(name="codes", dtype="uint8", shape=[-1, 3])
TEXT = TensorSpec(name="text", dtype="bytes", shape=[-1])


# Each helper decodes and then checks, as the request path does (the data plane runs the one check).
def decode(
    data: Any, specs: list[TensorSpec], *, allow_nonfinite: bool = False, max_batch: int = 16
) -> tuple[dict[str, np.ndarray], bool]:
    inputs, single = decode_input_data(data, specs)
    check_inputs(specs, inputs, allow_nonfinite=allow_nonfinite, max_batch=max_batch)
    return inputs, single


def oip(
    tensor: dict[str, Any],
    spec: TensorSpec = FEATURES,
    binary: bytes | None = None,
    *,
    allow_nonfinite: bool = False,
    max_batch: int = 16,
) -> np.ndarray:
    array = decode_oip_tensor(tensor, spec, binary)
    check_inputs([spec], {spec.name: array}, allow_nonfinite=allow_nonfinite, max_batch=max_batch)
    return array


def refused(match: str) -> Any:
    return pytest.raises(InvalidRequest, match=match)


# ---- decode_input_data --------------------------------------------------------------------------


def test_single_sample_is_batched_and_unbatched_on_output() -> None:
    inputs, single = decode([1, 2, 3, 4], [FEATURES])
    assert single is True
    assert inputs["input"].shape == (1, 4)
    assert inputs["input"].dtype == np.float32
    np.testing.assert_array_equal(inputs["input"], [[1, 2, 3, 4]])

    outputs = {"logits": np.array([[0.5, 1.5]], dtype=np.float32)}
    assert encode_outputs(outputs, unbatch=True) == {"logits": [0.5, 1.5]}
    assert encode_outputs(outputs, unbatch=False) == {"logits": [[0.5, 1.5]]}


def test_batch_is_kept_as_sent() -> None:
    inputs, single = decode([[1, 2, 3, 4], [5, 6, 7, 8.5]], [FEATURES])
    assert single is False
    assert inputs["input"].shape == (2, 4)
    assert inputs["input"][1, 3] == np.float32(8.5)


def test_fixed_shape_input_without_batch_dimension() -> None:
    inputs, single = decode([[1, 2, 3], [4, 5, 6]], [FIXED])
    assert single is False
    assert inputs["image"].shape == (2, 3)
    with refused(r"dimension 0 must be 2"):
        decode([[1, 2, 3]], [FIXED])


def test_one_input_model_accepts_a_dict_too() -> None:
    inputs, single = decode({"input": [1, 2, 3, 4]}, [FEATURES])
    assert single is True
    assert inputs["input"].shape == (1, 4)


def test_dict_inputs_for_a_multi_input_model() -> None:
    inputs, single = decode({"ids": [[1, 2, 3]], "mask": [[1, 1, 0]]}, [IDS, MASK])
    assert single is False
    assert inputs["ids"].dtype == np.int64
    assert inputs["mask"].dtype == np.float32
    np.testing.assert_array_equal(inputs["ids"], [[1, 2, 3]])


def test_multi_input_model_needs_a_dict() -> None:
    with refused(r"several inputs \(ids, mask\)"):
        decode([[1, 2, 3]], [IDS, MASK])


def test_unknown_input_is_refused() -> None:
    with refused(r"unknown input\(s\) \['extra'\]; expected \['ids', 'mask'\]"):
        decode({"ids": [1, 2, 3], "mask": [1, 1, 1], "extra": [1]}, [IDS, MASK])


def test_missing_input_is_refused() -> None:
    with refused(r"missing input 'mask'"):
        decode({"ids": [1, 2, 3]}, [IDS, MASK])


@pytest.mark.parametrize("ragged", [[[1, 2, 3, 4], [1, 2]], [[1, 2, 3, [4]]]])
def test_ragged_lists_are_refused(ragged: Any) -> None:
    with refused(r"input 'input': not a rectangular array"):
        decode(ragged, [FEATURES])


def test_absurdly_deep_nesting_is_refused_cleanly() -> None:
    deep: Any = [1, 2, 3, 4]
    for _ in range(70):
        deep = [deep]
    with pytest.raises(InvalidRequest):
        decode(deep, [FEATURES])


@pytest.mark.parametrize(
    "data",
    [[[[1, 2, 3, 4]]], 5.0],
    ids=["rank-3", "scalar"],
)
def test_wrong_rank_is_refused(data: Any) -> None:
    with refused(r"input 'input': expected 2 dimensions \[-1, 4\], got shape"):
        decode(data, [FEATURES])


def test_wrong_fixed_dimension_is_refused() -> None:
    with refused(
        r"input 'input': dimension 1 must be 4, got 3 \(expected shape \[-1, 4\], "
        r"got \[1, 3\]\)"
    ):
        decode([1, 2, 3], [FEATURES])


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused_unless_allowed(bad: float) -> None:
    with refused(r"input 'input' contains NaN or infinity"):
        decode([1, 2, bad, 4], [FEATURES])
    inputs, _ = decode([1, 2, bad, 4], [FEATURES], allow_nonfinite=True)
    assert not np.isfinite(inputs["input"]).all()


def test_float_for_an_integer_input() -> None:
    with refused(r"input 'ids': expected integers \(int64\)"):
        decode([1.5, 2, 3], [IDS])
    with refused(r"expected integers"):
        decode([math.nan, 2, 3], [IDS])
    # Integral floats (what many JSON encoders write for ints) are accepted and cast.
    inputs, _ = decode([1.0, 2.0, 3.0], [IDS])
    assert inputs["ids"].dtype == np.int64
    np.testing.assert_array_equal(inputs["ids"], [[1, 2, 3]])


def test_ints_and_bools_for_a_float_input_are_cast() -> None:
    inputs, _ = decode([1, 2, 3, 4], [FEATURES])
    assert inputs["input"].dtype == np.float32


@pytest.mark.parametrize("value", [300, -1])
def test_integers_out_of_range_for_the_dtype_are_refused(value: int) -> None:
    with refused(r"codes"):
        decode([value, 1, 2], [SMALL_INTS])


@pytest.mark.parametrize(
    "data",
    [["a", "b", "c", "d"], ["1", 2, 3, 4], [None, 1, 2, 3], {"input": {"a": 1}}],
    ids=["strings", "numeric-strings", "null", "object"],
)
def test_non_numbers_are_refused(data: Any) -> None:
    with refused(r"input 'input': expected numbers of type float32"):
        decode(data, [FEATURES])


def test_bytes_inputs_must_use_oip() -> None:
    with refused(r"input 'text' is BYTES: send it through the OIP endpoint"):
        decode(["hello"], [TEXT])


def test_max_batch() -> None:
    rows = [[0, 1, 2, 3]] * 3
    inputs, _ = decode(rows, [FEATURES], max_batch=3)
    assert inputs["input"].shape == (3, 4)
    with refused(r"input 'input': batch of 3 exceeds 2"):
        decode(rows, [FEATURES], max_batch=2)


def test_empty_input_is_refused() -> None:
    with refused(r"input 'ids' is empty"):
        decode(
            {"ids": [], "mask": [[1, 1, 1]]},
            [TensorSpec(name="ids", dtype="int64", shape=[-1]), MASK],
        )


# ---- decode_oip_tensor --------------------------------------------------------------------------


def test_oip_json_flat_data() -> None:
    array = oip({"name": "input", "shape": [2, 4], "datatype": "FP32", "data": list(range(8))})
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, np.arange(8, dtype=np.float32).reshape(2, 4))


def test_oip_json_nested_data() -> None:
    array = oip(
        {"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [[0, 1, 2, 3], [4, 5, 6, 7]]}
    )
    np.testing.assert_array_equal(array, np.arange(8, dtype=np.float32).reshape(2, 4))


def test_oip_integer_datatype() -> None:
    array = oip({"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [7, 8, 9]}, IDS)
    assert array.dtype == np.int64
    np.testing.assert_array_equal(array, [[7, 8, 9]])


@pytest.mark.parametrize("values", [6, 9])
def test_oip_size_does_not_fit_shape(values: int) -> None:
    with refused(rf"input 'input': {values} values do not fit shape \[2, 4\]"):
        oip({"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [0.0] * values})


def test_oip_shape_that_does_not_match_the_model() -> None:
    with refused(r"dimension 1 must be 4"):
        oip({"name": "input", "shape": [2, 3], "datatype": "FP32", "data": [0.0] * 6})
    with refused(r"expected 2 dimensions"):
        oip({"name": "input", "shape": [8], "datatype": "FP32", "data": [0.0] * 8})


@pytest.mark.parametrize("shape", [[2, -4], "2,4", None, [2.0, 4], [[2], 4]])
def test_oip_bad_shape_field(shape: Any) -> None:
    with refused(r"'shape' must be a list of non-negative integers"):
        oip({"name": "input", "shape": shape, "datatype": "FP32", "data": [0.0] * 8})


def test_oip_datatype_mismatch() -> None:
    with refused(r"input 'input': datatype FP64 does not match the model's FP32"):
        oip({"name": "input", "shape": [1, 4], "datatype": "FP64", "data": [0.0] * 4})
    with refused(r"input 'ids': datatype FP32 does not match the model's INT64"):
        oip({"name": "ids", "shape": [1, 3], "datatype": "FP32", "data": [0.0] * 3}, IDS)


@pytest.mark.parametrize("datatype", ["FLOAT", "fp32", None, 5])
def test_oip_unknown_datatype(datatype: Any) -> None:
    with refused(r"unknown datatype"):
        oip({"name": "input", "shape": [1, 4], "datatype": datatype, "data": [0.0] * 4})


def test_oip_missing_data() -> None:
    with refused(r"input 'input': missing 'data'"):
        oip({"name": "input", "shape": [1, 4], "datatype": "FP32"})


def test_oip_json_data_is_checked_like_predict() -> None:
    with refused(r"contains NaN or infinity"):
        oip(
            {
                "name": "input",
                "shape": [1, 4],
                "datatype": "FP32",
                "data": [1.0, math.nan, 0.0, 0.0],
            }
        )
    with refused(r"expected integers"):
        oip({"name": "ids", "shape": [1, 3], "datatype": "INT64", "data": [1, 2.5, 3]}, IDS)
    with refused(r"expected numbers"):
        oip({"name": "input", "shape": [1, 4], "datatype": "FP32", "data": ["a"] * 4})
    with refused(r"not a rectangular array"):
        oip({"name": "input", "shape": [2, 4], "datatype": "FP32", "data": [[0, 1, 2, 3], [4, 5]]})
    with refused(r"batch of 3 exceeds 2"):
        oip({"name": "input", "shape": [3, 4], "datatype": "FP32", "data": [0.0] * 12}, max_batch=2)


def test_oip_binary_payload() -> None:
    expected = np.arange(8, dtype=np.float32).reshape(2, 4)
    array = oip({"name": "input", "shape": [2, 4], "datatype": "FP32"}, binary=expected.tobytes())
    assert array.dtype == np.float32
    np.testing.assert_array_equal(array, expected)

    ids = np.array([[1, 2, 3]], dtype=np.int64)
    got = oip({"name": "ids", "shape": [1, 3], "datatype": "INT64"}, IDS, ids.tobytes())
    np.testing.assert_array_equal(got, ids)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_oip_binary_payload_of_the_wrong_size(size: int) -> None:
    with refused(rf"input 'input': {size} bytes of binary data do not fit shape \[2, 4\] of FP32"):
        oip({"name": "input", "shape": [2, 4], "datatype": "FP32"}, binary=b"\0" * size)


def test_oip_binary_payload_is_checked_too() -> None:
    data = np.array([[1, np.nan, 3, 4]], dtype=np.float32)
    with refused(r"contains NaN or infinity"):
        oip({"name": "input", "shape": [1, 4], "datatype": "FP32"}, binary=data.tobytes())
    allowed = oip(
        {"name": "input", "shape": [1, 4], "datatype": "FP32"},
        binary=data.tobytes(),
        allow_nonfinite=True,
    )
    assert np.isnan(allowed[0, 1])


@pytest.mark.parametrize("binary", [b"", None], ids=["binary", "json"])
def test_oip_huge_shape_is_refused_as_bad_input(binary: bytes | None) -> None:
    tensor: dict[str, Any] = {"name": "input", "shape": [2**32, 2**32], "datatype": "FP32"}
    if binary is None:
        tensor["data"] = []
    with pytest.raises(InvalidRequest):
        oip(tensor, binary=binary)


# ---- encode_oip_output --------------------------------------------------------------------------


def test_encode_oip_output_as_json() -> None:
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    entry, payload = encode_oip_output("logits", value, binary=False)
    assert payload == b""
    assert entry == {
        "name": "logits",
        "datatype": "FP32",
        "shape": [2, 3],
        "data": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
    }


def test_encode_oip_output_as_binary() -> None:
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    entry, payload = encode_oip_output("logits", value, binary=True)
    assert entry == {
        "name": "logits",
        "datatype": "FP32",
        "shape": [2, 3],
        "parameters": {"binary_data_size": 24},
    }
    np.testing.assert_array_equal(np.frombuffer(payload, dtype=np.float32).reshape(2, 3), value)


def test_encode_oip_binary_output_is_c_ordered() -> None:
    value = np.arange(6, dtype=np.int64).reshape(2, 3).T  # a non-contiguous view
    entry, payload = encode_oip_output("out", value, binary=True)
    assert entry["shape"] == [3, 2]
    assert entry["datatype"] == "INT64"
    np.testing.assert_array_equal(np.frombuffer(payload, dtype=np.int64).reshape(3, 2), value)


def test_encode_oip_bytes_output_is_always_json() -> None:
    value = np.array(["negative", "positive"])
    entry, payload = encode_oip_output("label", value, binary=True)
    assert payload == b""
    assert entry == {
        "name": "label",
        "datatype": "BYTES",
        "shape": [2],
        "data": ["negative", "positive"],
    }


@pytest.mark.parametrize(
    ("dtype", "name"),
    [
        ("bool", "BOOL"),
        ("uint8", "UINT8"),
        ("int32", "INT32"),
        ("float16", "FP16"),
        ("float64", "FP64"),
        ("<U3", "BYTES"),
        ("S3", "BYTES"),
        ("O", "BYTES"),
    ],
)
def test_oip_datatype_names(dtype: str, name: str) -> None:
    assert oip_datatype(np.zeros(1, dtype=dtype)) == name


def test_unsupported_output_dtype() -> None:
    with refused(r"unsupported output dtype complex64"):
        encode_oip_output("z", np.zeros(2, dtype=np.complex64), binary=False)
