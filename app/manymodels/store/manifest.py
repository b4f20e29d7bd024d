"""The manifest beside every model artifact: ``<root>/<model>/<version>/manifest.json``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# numpy dtype names we accept; the OIP datatype names map onto these (see manymodels.codec).
DType = Literal[
    "bool",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "int8",
    "int16",
    "int32",
    "int64",
    "float16",
    "float32",
    "float64",
    "bytes",
]


class TensorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    dtype: DType
    shape: list[int] = Field(description="-1 marks a dynamic dimension (e.g. the batch)")


class ModelManifest(BaseModel):
    """What a runtime needs to load and call one model version. Never contains code."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    version: str
    runtime: Literal["onnx", "torch"]
    # torch only: how the artifact was saved.
    format: Literal["onnx", "torch_export", "torchscript", "torch_state_dict"] = "onnx"
    artifact: str = Field(description="file name inside the version directory")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    size_bytes: int = Field(ge=0)
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    description: str = ""

    @property
    def platform(self) -> str:
        """The OIP/Triton platform string for model metadata."""
        return "onnxruntime_onnx" if self.runtime == "onnx" else "pytorch_libtorch"
