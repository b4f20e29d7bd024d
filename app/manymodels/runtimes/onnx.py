"""ONNX Runtime: one InferenceSession per model version, threads and provider set explicitly."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort

from manymodels.errors import InferenceError, ModelLoadError
from manymodels.runtimes.base import LoadedModel, RuntimeSettings
from manymodels.runtimes.onnx_scan import scan_onnx
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
        # External-data check and weight count from the file's structure, weights left unread.
        self._weight_bytes = scan_onnx(path)

        device, providers = _providers(settings)
        super().__init__(manifest, device)
        try:
            self.session: ort.InferenceSession | None = ort.InferenceSession(
                str(path), sess_options=session_options(settings), providers=providers
            )
        except Exception as exc:  # ORT raises its own Fail/InvalidGraph/RuntimeException types
            raise ModelLoadError(f"{manifest.name}:{manifest.version}: onnxruntime: {exc}") from exc
        self.device = _placed_device(self.session, device, settings, f"{manifest.name}:{manifest.version}")
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


# ORT's CUDA EP options. kSameAsRequested: the default arena doubles its reservations, which would
# make the GPU footprint unrelated to memory_bytes() and defeat the cache budget. HEURISTIC: the
# default (EXHAUSTIVE) benchmarks every cuDNN convolution algorithm for each new input shape, and
# dynamic batching makes many batch sizes, so each first request at a new size would pay a tuning
# run of up to seconds inside its own latency; cuDNN's heuristic pick costs little throughput.
CUDA_PROVIDER_OPTIONS = {"arena_extend_strategy": "kSameAsRequested", "cudnn_conv_algo_search": "HEURISTIC"}

_cuda_libs_lock = threading.Lock()
_cuda_libs_preloaded = False
_warned_cpu_fallback = False


def _providers(settings: RuntimeSettings) -> tuple[str, list]:
    """The device ("cuda" or "cpu") asked for and the providers list that asks for it.

    ``device: cuda`` without a CUDA provider raises ModelLoadError; ``auto`` quietly means CPU then.
    """
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if settings.device in ("auto", "cuda") and has_cuda:
        _preload_cuda_libs()
        return "cuda", [("CUDAExecutionProvider", dict(CUDA_PROVIDER_OPTIONS)), "CPUExecutionProvider"]
    if settings.device == "cuda":
        raise ModelLoadError(
            f"runtime.device is cuda but onnxruntime {ort.__version__} has no CUDAExecutionProvider "
            f"(available: {ort.get_available_providers()}): install onnxruntime-gpu, or set device auto/cpu"
        )
    return "cpu", ["CPUExecutionProvider"]


def _preload_cuda_libs() -> None:
    """Load the CUDA/cuDNN libraries from the nvidia-* pip packages once, before the first CUDA session.

    Without this the CUDA EP finds them only on LD_LIBRARY_PATH (or if torch was imported first);
    when it cannot, ORT logs an error and silently runs the session on CPU.
    """
    global _cuda_libs_preloaded
    with _cuda_libs_lock:
        if _cuda_libs_preloaded:
            return
        _cuda_libs_preloaded = True
        if hasattr(ort, "preload_dlls"):  # onnxruntime >= 1.21
            try:
                ort.preload_dlls()
            except Exception as exc:  # a library it cannot load: the session check below reports it
                log.warning("onnxruntime.preload_dlls() failed: %s", exc)


def _placed_device(session: ort.InferenceSession, device: str, settings: RuntimeSettings, what: str) -> str:
    """The device the session really runs on.

    Asked for CUDA, ORT falls back to CPU without raising when the CUDA EP cannot start (CUDA/cuDNN
    libraries missing or of the wrong major version, no GPU visible): it only logs. An explicit
    ``device: cuda`` must not turn into a slow CPU model, so that fails the load; ``auto`` accepts
    CPU and says so once.
    """
    global _warned_cpu_fallback
    if device != "cuda" or session.get_providers()[0] == "CUDAExecutionProvider":
        return device
    reason = (
        "onnxruntime could not start its CUDAExecutionProvider and fell back to CPU (see its log "
        "above: usually the CUDA/cuDNN libraries onnxruntime-gpu needs did not load, or no GPU is "
        "visible)"
    )
    if settings.device == "cuda":
        raise ModelLoadError(f"{what}: runtime.device is cuda but {reason}")
    if not _warned_cpu_fallback:
        _warned_cpu_fallback = True
        log.warning("runtime.device auto: %s; ONNX models run on CPU", reason)
    return "cpu"
