"""ONNX Runtime: one InferenceSession per model version, threads and provider set explicitly."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import AttributeProto, GraphProto, TensorProto, helper

from manymodels.errors import InferenceError, ModelLoadError
from manymodels.runtimes.base import LoadedModel, RuntimeSettings
from manymodels.store.manifest import ModelManifest

log = logging.getLogger(__name__)

# Resident memory of one session beyond its initializers, without the per-session CPU arena (the
# default, RuntimeSettings.cpu_mem_arena): measured with ORT 1.32 on CPU as the RSS growth, heap
# trimmed, of k live sessions of MLPs from 64->32->10 (9 KiB of weights) to 1024->4096->4096->10
# (80 MiB), divided by k: 78-96 KiB each whatever the size. Pre-packed MatMul/Gemm weights replace
# their initializers (each session cost 1.00x its weights for the large models), so the weights
# count once. With the arena on, a session also keeps its largest run's activations (117-528 KiB
# measured after one batch-1 run, more after larger batches): then this is a floor.
SESSION_OVERHEAD_BYTES = 96 * 1024


class OnnxModel(LoadedModel):
    def __init__(self, manifest: ModelManifest, artifact_path: Path, settings: RuntimeSettings):
        path = Path(artifact_path)
        proto = _parse(path)
        _check_external_data(proto, path.parent)
        self._weight_bytes = sum(_tensor_bytes(t) for t in _all_tensors(proto.graph))
        del proto  # the session re-reads the file; keeping the proto would double the footprint

        device, providers = _providers(settings)
        super().__init__(manifest, device)
        try:
            self.session: ort.InferenceSession | None = ort.InferenceSession(
                str(path), sess_options=session_options(settings), providers=providers
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
            raise ModelLoadError(f"{manifest.name}:{manifest.version}: onnxruntime: {exc}") from exc
        self._check_signature()

    def _check_signature(self) -> None:
        assert self.session is not None
        graph_in = {i.name for i in self.session.get_inputs()}
        graph_out = {o.name for o in self.session.get_outputs()}
        want_in = {s.name for s in self.manifest.inputs}
        want_out = [s.name for s in self.manifest.outputs]
        m = self.manifest
        if want_in != graph_in:
            raise ModelLoadError(
                f"{m.name}:{m.version}: manifest inputs {sorted(want_in)} do not match the "
                f"graph's {sorted(graph_in)}"
            )
        missing = [n for n in want_out if n not in graph_out]
        if missing:
            raise ModelLoadError(
                f"{m.name}:{m.version}: manifest outputs {missing} are not graph outputs "
                f"{sorted(graph_out)}"
            )

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.session  # local: close() from another thread must not break a running call
        if session is None:
            raise InferenceError(f"{self.manifest.name}:{self.manifest.version} is closed")
        names = [s.name for s in self.manifest.outputs]
        # InferenceSession.run is thread-safe; no lock needed.
        results = session.run(names, inputs)
        return dict(zip(names, results, strict=True))

    def memory_bytes(self) -> int:
        return self._weight_bytes + SESSION_OVERHEAD_BYTES

    def close(self) -> None:
        self.session = None


def session_options(settings: RuntimeSettings) -> ort.SessionOptions:
    so = ort.SessionOptions()
    so.intra_op_num_threads = settings.intra_op_threads
    so.inter_op_num_threads = settings.inter_op_threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Without the arena, activations are freed after each run instead of staying allocated in every
    # session (and out of memory_bytes()); measured <= 3% slower on an 84 MB MLP at batch 1-128.
    so.enable_cpu_mem_arena = settings.cpu_mem_arena
    # Spinning worker threads burn a core each while idle; with many sessions that is ruinous.
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def _providers(settings: RuntimeSettings) -> tuple[str, list]:
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if settings.device in ("auto", "cuda") and has_cuda:
        # kSameAsRequested: the default arena doubles its reservations, which would make the
        # GPU footprint unrelated to memory_bytes() and defeat the cache budget.
        cuda = ("CUDAExecutionProvider", {"arena_extend_strategy": "kSameAsRequested"})
        return "cuda", [cuda, "CPUExecutionProvider"]
    if settings.device == "cuda":
        log.warning("device=cuda requested but onnxruntime has no CUDA provider; using CPU")
    return "cpu", ["CPUExecutionProvider"]


def _parse(path: Path) -> onnx.ModelProto:
    try:
        # Never load external data here: its locations are checked first, by _check_external_data.
        return onnx.load(str(path), load_external_data=False)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"artifact not found: {path}") from exc
    except Exception as exc:  # protobuf DecodeError and friends
        raise ModelLoadError(f"{path.name} is not a valid ONNX model: {exc}") from exc


def _all_tensors(graph: GraphProto) -> Iterator[TensorProto]:
    """Initializers and tensor-valued attributes of ``graph`` and every nested subgraph."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors
            elif attr.type == AttributeProto.GRAPH:
                yield from _all_tensors(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _all_tensors(g)


def _check_external_data(proto: onnx.ModelProto, folder: Path) -> None:
    """Allow external data only as plain files inside the artifact's folder.

    ONNX external-data locations have had path traversal CVEs; ORT would follow ``../`` or an
    absolute path, so anything but a bare file name that resolves inside ``folder`` is refused.
    """
    root = os.path.realpath(folder)
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        loc = entries.get("location", "")
        plain = loc and loc not in (".", "..") and "/" not in loc and "\\" not in loc
        target = os.path.realpath(os.path.join(root, loc)) if plain else ""
        # realpath also catches a symlink inside the folder that points out of it.
        if not plain or os.path.dirname(target) != root or not os.path.isfile(target):
            raise ModelLoadError(
                f"tensor {tensor.name!r} has external data location {loc!r}: only plain file "
                f"names inside the model's folder are allowed"
            )


def _tensor_bytes(tensor: TensorProto) -> int:
    if tensor.data_type == TensorProto.STRING:
        return sum(len(s) for s in tensor.string_data)
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
    return itemsize * math.prod(tensor.dims)
