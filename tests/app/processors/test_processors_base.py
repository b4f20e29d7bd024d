from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from manymodels.errors import InvalidRequest
from manymodels.processors import Processor, load_processor_class
from manymodels.processors.text import TextClassifierProcessor
from manymodels.store.manifest import ModelManifest, TensorSpec
from manymodels.tensors import check_inputs


def manifest(*inputs: TensorSpec) -> ModelManifest:
    return ModelManifest(
        name="m",
        version="1",
        runtime="onnx",
        artifact="model.onnx",
        sha256="0" * 64,
        size_bytes=0,
        inputs=list(inputs),
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[-1, 2])],
    )


X = TensorSpec(name="x", dtype="float32", shape=[-1, 3])
IDS = TensorSpec(name="ids", dtype="int8", shape=[-1, 2])


class Doubler(Processor):
    class Nested(Processor):
        pass

    def postprocess(self, outputs: dict[str, np.ndarray]) -> Any:
        return {"doubled": (outputs["logits"] * 2).tolist()}


def test_default_processor_single_input() -> None:
    proc = Processor(manifest(X), {})
    batch = proc.preprocess([[1, 2, 3], [4, 5, 6]])
    assert batch["x"].dtype == np.float32 and batch["x"].shape == (2, 3)
    one = proc.preprocess([1.5, 2, 3])  # a single example gets its batch dimension
    np.testing.assert_array_equal(one["x"], np.array([[1.5, 2, 3]], np.float32))
    assert proc.postprocess({"logits": np.array([[1.0, 2.0]], np.float32)}) == {
        "logits": [[1.0, 2.0]]
    }


def test_default_processor_named_inputs() -> None:
    proc = Processor(manifest(X, IDS), {})
    out = proc.preprocess({"x": [[0, 0, 1]], "ids": [[1, -2]]})
    assert out["ids"].dtype == np.int8 and out["ids"].tolist() == [[1, -2]]
    with pytest.raises(InvalidRequest, match="send input_data as an object"):
        proc.preprocess([[0, 0, 1]])
    with pytest.raises(InvalidRequest, match="exactly the keys"):
        proc.preprocess({"x": [[0, 0, 1]]})


@pytest.mark.parametrize(
    ("spec", "value", "message"),
    [
        (X, "1,2,3", "must be an array"),
        (X, None, "must be an array"),
        (X, [[1, 2], [3]], "rectangular"),
        (X, [["1", "2", "3"]], "must hold float32"),
        (X, [[1, 2, float("nan")]], "NaN"),
        (X, [[1, 2, 1e39]], "NaN or infinity"),  # overflows float32
        (X, [[1, 2]], "shape"),
        (X, [[[1, 2, 3]]], "dimensions"),
        (IDS, [[1.5, 2]], "must hold int8"),
        (IDS, [[300, 2]], "out of range"),
        (IDS, [[-1, True]], None),  # bools are fine as ints
    ],
)
def test_default_processor_rejects_bad_tensors(spec: TensorSpec, value: Any, message: str) -> None:
    """What the processor cannot convert it refuses; what it converts, the one checker
    (manymodels.tensors, run by the data plane on every path) refuses with the same words."""
    proc = Processor(manifest(spec), {})
    if message is None:
        assert proc.preprocess(value)[spec.name].tolist() == [[-1, 1]]
        return
    with pytest.raises(InvalidRequest, match=message):
        check_inputs([spec], proc.preprocess(value), allow_nonfinite=False, max_batch=4096)


def test_nonfinite_passes_the_processor_and_is_the_checkers_call() -> None:
    out = Processor(manifest(X), {}).preprocess([1, float("nan"), 3])
    assert np.isnan(out["x"][0, 1])
    check_inputs([X], out, allow_nonfinite=True, max_batch=4096)
    with pytest.raises(InvalidRequest, match="batch of 1 exceeds 0"):
        check_inputs([X], out, allow_nonfinite=True, max_batch=0)


def test_load_processor_class() -> None:
    assert load_processor_class("manymodels.processors.text:TextClassifierProcessor") is (
        TextClassifierProcessor
    )
    assert load_processor_class(f"{__name__}:Doubler") is Doubler
    assert load_processor_class(f"{__name__}:Doubler.Nested") is Doubler.Nested


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("manymodels.processors.text.TextClassifierProcessor", "must look like"),
        ("manymodels/processors:Processor", "must look like"),
        (":Processor", "must look like"),
        ("manymodels.processors:", "must look like"),
        ("manymodels.no_such_module:Processor", "cannot import"),
        ("manymodels.processors.text:Nope", "has no attribute"),
        ("manymodels.errors:InvalidRequest", "not a subclass"),
        ("manymodels.processors.text:featurize", "not a subclass"),
    ],
)
def test_load_processor_class_errors(path: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_processor_class(path)
