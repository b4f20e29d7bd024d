"""PyTorch: ``torch.export`` programs (.pt2) and TorchScript modules.

torch is an optional extra, so it is imported only when a torch model is loaded.

Security: a TorchScript archive contains code that runs when the model is called;
there is no safe mode, so serve TorchScript only from a trusted store whose artifacts are
hash-verified (the store checks ``manifest.sha256`` before anything reaches this module).
``torch.export`` archives hold a serialized graph of ATen ops plus weights, a much smaller
surface. State dicts (``torch_state_dict``) are read with ``torch.load(weights_only=True)`` into a
module whose class is named in the config (code from the image); arbitrary pickles are refused.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from manymodels.errors import InferenceError, ModelLoadError
from manymodels.runtimes.base import LoadedModel, RuntimeSettings
from manymodels.store.manifest import ModelManifest

# Per-module resident memory beyond parameters/buffers/constants: measured with torch 2.15 on
# CPU by loading 20 copies of a 64->32 Linear module in a fresh process (~96 KiB TorchScript,
# ~113 KiB torch.export GraphModule), rounded up.
MODULE_OVERHEAD_BYTES = 128 * 1024

_threads_lock = threading.Lock()
_threads_set = False


def _configure_threads(settings: RuntimeSettings) -> None:
    """torch's thread pools are process-global: size them once, on the first torch load."""
    global _threads_set
    import torch

    with _threads_lock:
        if _threads_set:
            return
        torch.set_num_threads(settings.intra_op_threads)
        # Only settable before any inter-op work has started in this process; else keep torch's.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(settings.inter_op_threads)
        _threads_set = True


class TorchModel(LoadedModel):
    def __init__(
        self,
        manifest: ModelManifest,
        artifact_path: Path,
        settings: RuntimeSettings,
        *,
        module_factory: Callable[[], Any] | None = None,
    ):
        self._module_factory = module_factory
        try:
            import torch
        except ImportError as exc:
            raise ModelLoadError(
                f"{manifest.name}:{manifest.version} needs torch: install manymodels[torch]"
            ) from exc
        self._torch = torch
        _configure_threads(settings)

        if settings.device == "cuda" and not torch.cuda.is_available():
            # torch would run on CPU only if asked; an explicit cuda must not become a slow CPU model.
            raise ModelLoadError(
                f"{manifest.name}:{manifest.version}: runtime.device is cuda but torch {torch.__version__} "
                f"sees no usable GPU (torch.cuda.is_available() is False): set device auto or cpu"
            )
        want_cuda = settings.device in ("auto", "cuda")
        device = "cuda" if want_cuda and torch.cuda.is_available() else "cpu"
        super().__init__(manifest, device)
        path = Path(artifact_path)
        if not path.is_file():
            raise ModelLoadError(f"artifact not found: {path}")
        try:
            self.module = self._load(path)
        except ModelLoadError:
            raise
        except Exception as exc:  # torch raises RuntimeError, zipfile/pickle errors, ...
            raise ModelLoadError(
                f"{manifest.name}:{manifest.version}: cannot load {manifest.format} artifact: {exc}"
            ) from exc
        self._bytes = _tensor_bytes(self.module, torch) + MODULE_OVERHEAD_BYTES

    def _load(self, path: Path) -> Any:
        torch, fmt = self._torch, self.manifest.format
        if fmt == "torchscript":
            with warnings.catch_warnings():
                # torch.jit.* is deprecated upstream but still the way to run existing archives.
                warnings.simplefilter("ignore", FutureWarning)
                module = torch.jit.load(str(path), map_location=self.device)
            module.eval()  # a scripted module may have been saved in training mode
        elif fmt == "torch_state_dict":
            if self._module_factory is None:
                raise ModelLoadError(
                    f"{self._id()}: a torch_state_dict artifact needs the module class in the config "
                    f"(models.{self.manifest.name}.module: 'package.module:Class')"
                )
            # weights_only: tensors and plain containers only; anything else in the pickle is refused.
            # Loaded straight onto the target device: the module takes these tensors as they are.
            state = torch.load(str(path), map_location=self.device, weights_only=True)
            module = _module_with_state(self._module_factory, state, self.device, torch).eval()
        elif fmt == "torch_export":
            program = torch.export.load(str(path))
            # An exported graph is fixed at export time: no train/eval switch (eval() raises).
            module = _place_program(program, self.device, torch, self._id()).module()
        else:
            raise ModelLoadError(
                f"{self.manifest.name}:{self.manifest.version}: runtime torch cannot load "
                f"format {fmt!r} (expected torchscript, torch_export or torch_state_dict)"
            )
        return module

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        module = self.module
        if module is None:
            raise InferenceError(f"{self.manifest.name}:{self.manifest.version} is closed")
        torch = self._torch
        args = [_to_tensor(inputs[s.name], torch, self.device) for s in self.manifest.inputs]
        with torch.inference_mode():
            result = module(*args)
        return self._name_outputs(result)

    def _name_outputs(self, result: Any) -> dict[str, np.ndarray]:
        names = [s.name for s in self.manifest.outputs]
        if isinstance(result, dict):
            missing = [n for n in names if n not in result]
            if missing:
                raise InferenceError(f"{self._id()}: model returned no outputs named {missing}")
            values = [result[n] for n in names]
        elif isinstance(result, (tuple, list)):
            values = list(result)
        else:
            values = [result]
        if len(values) != len(names):
            raise InferenceError(
                f"{self._id()}: model returned {len(values)} outputs, manifest names {len(names)}"
            )
        return {n: v.detach().cpu().numpy() for n, v in zip(names, values, strict=True)}

    def _id(self) -> str:
        return f"{self.manifest.name}:{self.manifest.version}"

    def memory_bytes(self) -> int:
        return self._bytes

    def close(self) -> None:
        self.module = None
        if self.device == "cuda":
            self._torch.cuda.empty_cache()  # hand freed blocks back so the budget means something


def _place_program(program: Any, device: str, torch: Any, what: str) -> Any:
    """``program`` (a torch.export ExportedProgram) with everything it holds on ``device``.

    ``.module().to(device)`` would move parameters and buffers but not the constants the graph
    makes tensors from (e.g. ``torch.tensor(...)`` in forward), which would stay on the export
    device; the pass rewrites the program's state, constants and device arguments together.
    """
    try:
        from torch.export.passes import move_to_device_pass
    except ImportError:
        if device == "cpu":
            return program  # an older torch: CPU is the usual export device, nothing to move
        raise ModelLoadError(
            f"{what}: torch {torch.__version__} has no torch.export.passes.move_to_device_pass, "
            f"needed to put an exported program on {device}"
        ) from None
    return move_to_device_pass(program, device)


def _module_with_state(factory: Callable[[], Any], state: dict[str, Any], device: str, torch: Any) -> Any:
    """``factory()``'s module holding ``state``'s weights on ``device``, copied as little as possible.

    Built on the meta device (no memory, no random init) and given the loaded tensors themselves
    (``assign=True``): the weights exist once, already on ``device``. A module that cannot be built
    on meta (its constructor reads tensor values) or that keeps tensors outside the state dict
    (non-persistent buffers, plain tensor attributes: left on meta) is built normally instead.
    """
    try:
        with torch.device("meta"):
            module = factory()
    except Exception:  # e.g. .item() or numpy on a meta tensor; the normal path reports real errors
        module = None
    if module is not None:
        expected = module.state_dict()
        # assign keeps the checkpoint's dtype; a normal load would cast to the module's, so do that.
        state = {
            k: v.to(expected[k].dtype) if k in expected and v.dtype != expected[k].dtype else v
            for k, v in state.items()
        }
        module.load_state_dict(state, assign=True)
        if not any(t.is_meta for t in _tensors(module, torch)):
            return module.to(device)
    module = factory().to(device)
    module.load_state_dict(state)
    return module


def _to_tensor(arr: np.ndarray, torch: Any, device: str) -> Any:
    # from_numpy shares memory and warns on read-only or negative-stride arrays (e.g. views made
    # by np.frombuffer in the codec): copy those once instead.
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, order="C", copy=True)
    return torch.from_numpy(arr).to(device)


def _tensor_bytes(module: Any, torch: Any) -> int:
    """Bytes of every distinct tensor the module holds: parameters, buffers and lifted constants."""
    seen: dict[int, int] = {}
    for t in _tensors(module, torch):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()  # shared storages are counted once
    return sum(seen.values())


def _tensors(module: Any, torch: Any) -> list[Any]:
    """Parameters, buffers and tensors held as plain attributes of ``module`` and its submodules."""
    tensors = [*module.parameters(), *module.buffers()]
    for sub in module.modules():
        # torch.export lifts constant tensors into plain attributes, not buffers.
        tensors.extend(v for v in vars(sub).values() if isinstance(v, torch.Tensor))
    return tensors
