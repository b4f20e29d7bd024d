"""The one input check (manymodels.tensors): what every protocol path refuses, in one wording."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from manymodels.errors import InvalidRequest
from manymodels.store.manifest import TensorSpec
from manymodels.tensors import check_inputs

X = TensorSpec(name="x", dtype="float32", shape=[-1, 4])
TEXT = TensorSpec(name="text", dtype="bytes", shape=[-1])


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({}, "missing input 'x'"),
        ({"x": np.ones((2, 4), np.float32), "z": np.ones(1)}, r"unknown input\(s\) \['z'\]"),
        ({"x": np.ones((2, 4), np.float64)}, "input 'x': expected float32, got float64"),
        ({"x": np.ones((2, 5), np.float32)}, r"dimension 1 must be 4, got 5 \(expected shape"),
        ({"x": np.ones(4, np.float32)}, r"expected 2 dimensions \[-1, 4\], got shape \[4\]"),
        ({"x": [[1.0, 2.0, 3.0, 4.0]]}, "must be an array, got list"),
        ({"x": np.ones((0, 4), np.float32)}, "input 'x' is empty"),
        ({"x": np.ones((9, 4), np.float32)}, "batch of 9 exceeds 8"),
        ({"x": np.array([[1, np.inf, 3, 4]], np.float32)}, "contains NaN or infinity"),
    ],
)
def test_refused(inputs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        check_inputs([X], inputs, allow_nonfinite=False, max_batch=8)


def test_accepted() -> None:
    check_inputs([X], {"x": np.ones((8, 4), np.float32)}, allow_nonfinite=False, max_batch=8)
    nan = {"x": np.array([[1, np.nan, 3, 4]], np.float32)}
    check_inputs([X], nan, allow_nonfinite=True, max_batch=8)
    check_inputs([TEXT], {"text": np.array([b"a", b"bc"], dtype=object)}, allow_nonfinite=False, max_batch=8)
    with pytest.raises(InvalidRequest, match="expected bytes"):
        check_inputs([TEXT], {"text": np.ones(2, np.float32)}, allow_nonfinite=False, max_batch=8)
