from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest

from manymodels.errors import InferenceError, ModelLoadError
from manymodels.runtimes import RuntimeSettings, load_model
from manymodels.runtimes import torch as torch_runtime
from manymodels.store.manifest import ModelManifest, TensorSpec

torch = pytest.importorskip("torch")

CPU = RuntimeSettings(device="cpu")


class TwoHeads(torch.nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.body = torch.nn.Linear(6, hidden)
        self.head = torch.nn.Linear(hidden, 3)
        self.register_buffer("scale", torch.full((3,), 2.0))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(torch.relu(self.body(x))) * self.scale
        return logits, torch.softmax(logits, dim=-1)


def manifest_for(path: Path, fmt: str, outputs: tuple[str, ...] = ("logits", "probs")) -> ModelManifest:
    data = path.read_bytes()
    return ModelManifest(
        name="tm",
        version="1",
        runtime="torch",
        format=fmt,
        artifact=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, 6])],
        outputs=[TensorSpec(name=o, dtype="float32", shape=[-1, 3]) for o in outputs],
    )


def save(module: torch.nn.Module, fmt: str, path: Path) -> Path:
    example = (torch.randn(2, 6),)
    if fmt == "torch_export":
        batch = torch.export.Dim("batch")
        program = torch.export.export(module, example, dynamic_shapes=({0: batch},))
        torch.export.save(program, str(path))
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(module).save(str(path))
    return path


@pytest.fixture(scope="module")
def eager() -> TwoHeads:
    torch.manual_seed(0)
    return TwoHeads().eval()


@pytest.fixture(scope="module", params=["torchscript", "torch_export"])
def artifact(request: pytest.FixtureRequest, eager: TwoHeads, tmp_path_factory) -> tuple[str, Path]:
    fmt = request.param
    path = save(eager, fmt, tmp_path_factory.mktemp(fmt) / "model.bin")
    return fmt, path


@pytest.mark.parametrize("batch", [1, 5])
def test_infer_matches_eager(artifact: tuple[str, Path], eager: TwoHeads, batch: int) -> None:
    fmt, path = artifact
    model = load_model(manifest_for(path, fmt), path, CPU)
    x = np.random.default_rng(batch).standard_normal((batch, 6), dtype=np.float32)
    out = model.infer({"x": x})
    with torch.inference_mode():
        logits, probs = eager(torch.from_numpy(x))
    assert list(out) == ["logits", "probs"] and model.device == "cpu"
    np.testing.assert_allclose(out["logits"], logits.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["probs"], probs.numpy(), rtol=1e-5, atol=1e-6)
    assert out["logits"].dtype == np.float32


def test_read_only_input(artifact: tuple[str, Path]) -> None:
    fmt, path = artifact
    model = load_model(manifest_for(path, fmt), path, CPU)
    x = np.frombuffer(np.ones(12, np.float32).tobytes(), dtype=np.float32).reshape(2, 6)
    assert not x.flags.writeable
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch warns when handed a non-writable array
        assert model.infer({"x": x})["probs"].shape == (2, 3)


def test_memory_bytes_counts_params_and_buffers(tmp_path: Path) -> None:
    sizes = []
    for hidden in (4, 256):
        module = TwoHeads(hidden).eval()
        path = save(module, "torchscript", tmp_path / f"h{hidden}.pt")
        model = load_model(manifest_for(path, "torchscript"), path, CPU)
        params = sum(t.numel() * t.element_size() for t in [*module.parameters(), *module.buffers()])
        assert model.memory_bytes() == params + torch_runtime.MODULE_OVERHEAD_BYTES
        sizes.append(model.memory_bytes())
    assert sizes[0] < sizes[1]


def test_output_count_mismatch(artifact: tuple[str, Path]) -> None:
    fmt, path = artifact
    model = load_model(manifest_for(path, fmt, outputs=("logits",)), path, CPU)
    with pytest.raises(InferenceError, match="returned 2 outputs"):
        model.infer({"x": np.ones((1, 6), np.float32)})


def test_load_errors(tmp_path: Path, artifact: tuple[str, Path]) -> None:
    fmt, path = artifact
    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a torch archive" * 20)
    with pytest.raises(ModelLoadError, match=f"cannot load {fmt}"):
        load_model(manifest_for(bad, fmt), bad, CPU)
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(manifest_for(path, fmt), tmp_path / "missing.pt", CPU)
    with pytest.raises(ModelLoadError, match="cannot load format 'onnx'"):
        load_model(manifest_for(path, "onnx"), path, CPU)


def test_close(artifact: tuple[str, Path]) -> None:
    fmt, path = artifact
    model = load_model(manifest_for(path, fmt), path, CPU)
    model.close()
    with pytest.raises(InferenceError, match="closed"):
        model.infer({"x": np.ones((1, 6), np.float32)})


def test_threads_set_once_per_process(artifact: tuple[str, Path], monkeypatch) -> None:
    fmt, path = artifact
    before = torch.get_num_threads()
    monkeypatch.setattr(torch_runtime, "_threads_set", False)
    try:
        load_model(manifest_for(path, fmt), path, RuntimeSettings(device="cpu", intra_op_threads=2))
        assert torch.get_num_threads() == 2
        # later loads leave the process-wide pool alone
        load_model(manifest_for(path, fmt), path, RuntimeSettings(device="cpu", intra_op_threads=1))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---- torch_state_dict: weights only, the architecture comes from the config ------------------


def assert_answers_like(loaded: object, module: torch.nn.Module) -> None:
    """The loaded model's outputs on a fixed batch equal the eager module's."""
    x = np.random.default_rng(0).random((4, 6), dtype=np.float32)
    out = loaded.infer({"x": x})  # type: ignore[attr-defined]
    with torch.inference_mode():
        logits, probs = module(torch.from_numpy(x))
    np.testing.assert_allclose(out["logits"], logits.numpy(), rtol=1e-6)
    np.testing.assert_allclose(out["probs"], probs.numpy(), rtol=1e-6)


class Evil:
    """Unpickling this would run a command: weights_only loading must refuse it."""

    def __reduce__(self) -> tuple:
        import os

        return (os.system, ("echo pwned",))


def test_state_dict_loads_into_the_configured_module(tmp_path: Path) -> None:
    module = TwoHeads(hidden=8).eval()
    path = tmp_path / "weights.pt"
    torch.save(module.state_dict(), str(path))
    loaded = load_model(
        manifest_for(path, "torch_state_dict"), path, CPU, module_factory=lambda: TwoHeads(hidden=8)
    )
    assert_answers_like(loaded, module)
    assert loaded.memory_bytes() > sum(p.numel() * 4 for p in module.parameters())


def test_state_dict_without_a_module_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(TwoHeads().state_dict(), str(path))
    with pytest.raises(ModelLoadError, match="needs the module class"):
        load_model(manifest_for(path, "torch_state_dict"), path, CPU)


def test_state_dict_pickle_with_code_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save({"body.weight": Evil()}, str(path))
    with pytest.raises(ModelLoadError, match="cannot load torch_state_dict"):
        load_model(manifest_for(path, "torch_state_dict"), path, CPU, module_factory=TwoHeads)


def test_state_dict_for_another_architecture_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    torch.save(TwoHeads(hidden=8).state_dict(), str(path))
    with pytest.raises(ModelLoadError, match="cannot load torch_state_dict"):
        load_model(
            manifest_for(path, "torch_state_dict"),
            path,
            CPU,
            module_factory=lambda: TwoHeads(hidden=16),
        )


# ---- placement and loading without extra copies ---------------------------------------------


class RecordsConstruction(TwoHeads):
    """TwoHeads that records the default device it was built on (meta: no memory, no random init)."""

    built_on: list[str] = []

    def __init__(self, hidden: int = 8) -> None:
        RecordsConstruction.built_on.append(torch.empty(()).device.type)
        super().__init__(hidden)


class ReadsValuesWhenBuilt(TwoHeads):
    """A constructor that reads a tensor's value: impossible on the meta device."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__(hidden)
        self.offset = float(torch.ones(1).sum().item())

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, probs = super().forward(x)
        return logits + self.offset, probs


class NonPersistentBuffer(TwoHeads):
    """Keeps a tensor outside the state dict: built on meta it would stay there, without values."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__(hidden)
        self.register_buffer("shift", torch.arange(3, dtype=torch.float32), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, probs = super().forward(x)
        return logits + self.shift, probs


def _state_dict_model(tmp_path: Path, cls: type, state: dict | None = None) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(3)
    module = cls(8).eval()
    path = tmp_path / "weights.pt"
    torch.save(state if state is not None else module.state_dict(), str(path))
    manifest = manifest_for(path, "torch_state_dict")
    return module, load_model(manifest, path, CPU, module_factory=lambda: cls(8))


@pytest.mark.parametrize("cls", [RecordsConstruction, ReadsValuesWhenBuilt, NonPersistentBuffer])
def test_state_dict_modules_load_with_or_without_the_meta_device(tmp_path: Path, cls: type) -> None:
    RecordsConstruction.built_on.clear()
    module, loaded = _state_dict_model(tmp_path, cls)
    assert_answers_like(loaded, module)
    tensors = [*loaded.module.parameters(), *loaded.module.buffers()]
    assert not any(t.is_meta for t in tensors)
    held = sum(t.numel() * t.element_size() for t in tensors)
    assert loaded.memory_bytes() == held + torch_runtime.MODULE_OVERHEAD_BYTES
    if cls is RecordsConstruction:
        # The checkpoint's own tensors became the weights: the module was built once, on meta.
        assert RecordsConstruction.built_on == ["cpu", "meta"]  # the reference module, then the load


def test_state_dict_is_cast_to_the_module_dtypes(tmp_path: Path) -> None:
    torch.manual_seed(3)
    reference = TwoHeads(8).eval()
    as_float64 = {k: v.double() for k, v in reference.state_dict().items()}
    _, loaded = _state_dict_model(tmp_path, TwoHeads, state=as_float64)
    assert {t.dtype for t in loaded.module.parameters()} == {torch.float32}  # as load_state_dict casts
    x = np.ones((2, 6), np.float32)
    with torch.inference_mode():
        want = reference(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(loaded.infer({"x": x})["logits"], want, rtol=1e-6)


class AddsAConstant(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # A tensor made in forward: torch.export lifts it to a constant that .to() would not move.
        y = self.lin(x) + torch.tensor([1.0, 2.0, 3.0])
        return y, torch.softmax(y, dim=-1)


def test_exported_program_is_placed_with_the_device_pass(tmp_path: Path, monkeypatch) -> None:
    import torch.export.passes as passes

    module = AddsAConstant().eval()
    path = save(module, "torch_export", tmp_path / "model.pt2")
    calls = []
    real = passes.move_to_device_pass
    monkeypatch.setattr(passes, "move_to_device_pass", lambda ep, loc: calls.append(loc) or real(ep, loc))
    loaded = load_model(manifest_for(path, "torch_export"), path, CPU)
    assert calls == ["cpu"]
    x = np.ones((2, 6), np.float32)
    with torch.inference_mode():
        want = module(torch.from_numpy(x))[0].numpy()
    np.testing.assert_allclose(loaded.infer({"x": x})["logits"], want, rtol=1e-6)


def test_exported_program_without_the_device_pass(tmp_path: Path, monkeypatch) -> None:
    path = save(AddsAConstant().eval(), "torch_export", tmp_path / "model.pt2")
    program = torch.export.load(str(path))
    monkeypatch.setitem(__import__("sys").modules, "torch.export.passes", None)  # an older torch
    assert torch_runtime._place_program(program, "cpu", torch, "tm:1") is program
    with pytest.raises(ModelLoadError, match="tm:1: .*move_to_device_pass.*cuda"):
        torch_runtime._place_program(program, "cuda", torch, "tm:1")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: nothing to refuse")
def test_explicit_cuda_without_a_gpu_fails_and_auto_uses_cpu(artifact: tuple[str, Path]) -> None:
    fmt, path = artifact
    with pytest.raises(ModelLoadError, match="tm:1: runtime.device is cuda but torch .* no usable GPU"):
        load_model(manifest_for(path, fmt), path, RuntimeSettings(device="cuda"))
    assert load_model(manifest_for(path, fmt), path, RuntimeSettings(device="auto")).device == "cpu"
