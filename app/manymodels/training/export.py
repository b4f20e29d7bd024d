"""Exporting the trained model to ONNX with a dynamic batch dimension, and its manifest tensors.

torch 2.15's ``torch.onnx.export`` defaults to the torch.export-based exporter (``dynamo=True``),
which needs the ``onnxscript`` package that neither image installs; the TorchScript-based
exporter (``dynamo=False``) needs nothing beyond torch, works offline and handles the plain
feed-forward models tasks train here. It warns that it is deprecated; that warning is silenced.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper

from manymodels.store.manifest import TensorSpec

OPSET = 17


def export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    input_name: str,
    output_name: str,
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Write ``model`` (on the CPU, eval mode) to ``path``; return the manifest's inputs and outputs."""
    model = model.to("cpu").eval()
    example = example.to("cpu")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            input_names=[input_name],
            output_names=[output_name],
            dynamic_axes={input_name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=OPSET,
        )
    graph = onnx.load(str(path)).graph
    return [_spec(v) for v in graph.input], [_spec(v) for v in graph.output]


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor = value.type.tensor_type
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim]
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)
