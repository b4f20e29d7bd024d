from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np
import onnx
import pydantic
import pytest

from manymodels.demo.catalog import mlp_onnx
from manymodels.errors import InferenceError, ModelLoadError
from manymodels.runtimes import RuntimeSettings, available_devices, load_model
from manymodels.runtimes.onnx import SESSION_OVERHEAD_BYTES, session_options
from manymodels.store.manifest import ModelManifest, TensorSpec

CPU = RuntimeSettings(device="cpu")


def make_layers(hidden: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal((4, hidden), dtype=np.float32),
            rng.standard_normal(hidden, dtype=np.float32),
        ),
        (
            rng.standard_normal((hidden, 3), dtype=np.float32),
            rng.standard_normal(3, dtype=np.float32),
        ),
    ]


def reference(layers: list[tuple[np.ndarray, np.ndarray]], x: np.ndarray) -> np.ndarray:
    (w1, b1), (w2, b2) = layers
    return np.maximum(x @ w1 + b1, 0) @ w2 + b2


def manifest_for(
    path: Path, *, outputs: tuple[str, ...] = ("y",), fmt: str = "onnx"
) -> ModelManifest:
    data = path.read_bytes()
    return ModelManifest(
        name="tiny",
        version="1",
        runtime="onnx",
        format=fmt,
        artifact=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, 4])],
        outputs=[TensorSpec(name=o, dtype="float32", shape=[-1, 3]) for o in outputs],
    )


def write_model(folder: Path, hidden: int = 8, seed: int = 0) -> tuple[Path, list]:
    folder.mkdir(parents=True, exist_ok=True)
    layers = make_layers(hidden, seed)
    path = folder / "model.onnx"
    path.write_bytes(mlp_onnx(layers, "x", "y"))
    return path, layers


def test_load_and_infer_matches_numpy(tmp_path: Path) -> None:
    path, layers = write_model(tmp_path)
    model = load_model(manifest_for(path), path, CPU)
    x = np.random.default_rng(1).standard_normal((5, 4), dtype=np.float32)
    out = model.infer({"x": x})
    assert list(out) == ["y"] and out["y"].shape == (5, 3) and out["y"].dtype == np.float32
    np.testing.assert_allclose(out["y"], reference(layers, x), rtol=1e-5, atol=1e-5)
    assert model.device == "cpu" and model.manifest.name == "tiny"


def test_memory_bytes_is_initializer_bytes_plus_overhead(tmp_path: Path) -> None:
    sizes = {}
    for hidden in (8, 64, 512):
        path, layers = write_model(tmp_path / str(hidden), hidden)
        model = load_model(manifest_for(path), path, CPU)
        weights = sum(w.nbytes + b.nbytes for w, b in layers)
        assert model.memory_bytes() == weights + SESSION_OVERHEAD_BYTES
        assert model.memory_bytes() == load_model(manifest_for(path), path, CPU).memory_bytes()
        sizes[hidden] = model.memory_bytes()
    assert sizes[8] < sizes[64] < sizes[512]


def test_thread_settings_are_applied(tmp_path: Path) -> None:
    path, _ = write_model(tmp_path)
    settings = RuntimeSettings(device="cpu", intra_op_threads=3, inter_op_threads=2)
    model = load_model(manifest_for(path), path, settings)
    opts = model.session.get_session_options()
    assert (opts.intra_op_num_threads, opts.inter_op_num_threads) == (3, 2)


def test_cpu_arena_is_off_unless_asked_for(tmp_path: Path) -> None:
    path, layers = write_model(tmp_path)
    x = np.ones((2, 4), np.float32)
    for arena in (False, True):
        settings = RuntimeSettings(device="cpu", cpu_mem_arena=arena)
        assert session_options(settings).enable_cpu_mem_arena is arena
        model = load_model(manifest_for(path), path, settings)
        assert model.session.get_session_options().enable_cpu_mem_arena is arena
        np.testing.assert_allclose(model.infer({"x": x})["y"], reference(layers, x), rtol=1e-5)
    assert RuntimeSettings().cpu_mem_arena is False


def test_settings_validation() -> None:
    with pytest.raises(pydantic.ValidationError, match="heap_trim_interval_s"):
        RuntimeSettings(heap_trim_interval_s=-1)
    with pytest.raises(pydantic.ValidationError):
        RuntimeSettings(intra_op_threads=0)
    with pytest.raises(pydantic.ValidationError):
        RuntimeSettings(device="tpu")
    with pytest.raises(pydantic.ValidationError):
        RuntimeSettings(threads=4)
    assert "cpu" in available_devices()


def save_external(folder: Path, location: str) -> Path:
    """A model whose weights live in ``folder/weights.bin``, with the stored location rewritten."""
    path, _ = write_model(folder, hidden=64)
    proto = onnx.load(str(path))
    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    proto = onnx.load(str(path), load_external_data=False)
    for tensor in proto.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    onnx.save_model(proto, str(path))
    return path


def test_external_data_inside_folder_loads(tmp_path: Path) -> None:
    path = save_external(tmp_path / "m", "weights.bin")
    model = load_model(manifest_for(path), path, CPU)
    assert model.infer({"x": np.ones((2, 4), np.float32)})["y"].shape == (2, 3)
    # counted from dims, not from the (empty) inline data
    assert model.memory_bytes() == (4 * 64 + 64 + 64 * 3 + 3) * 4 + SESSION_OVERHEAD_BYTES


@pytest.mark.parametrize("where", ["parent", "absolute", "subdir", "symlink", "missing"])
def test_external_data_outside_folder_is_refused(tmp_path: Path, where: str) -> None:
    secret = tmp_path / "secret.bin"
    location = {
        "parent": "../secret.bin",
        "absolute": str(secret),
        "subdir": "sub/weights.bin",
        "symlink": "link.bin",
        "missing": "nothere.bin",
    }[where]
    path = save_external(tmp_path / "m", location)
    os.replace(tmp_path / "m" / "weights.bin", secret)  # real weights, now outside the folder
    (tmp_path / "m" / "sub").mkdir()
    (tmp_path / "m" / "link.bin").symlink_to(secret)
    with pytest.raises(ModelLoadError, match="only plain file names inside"):
        load_model(manifest_for(path), path, CPU)


def test_corrupt_or_missing_artifact(tmp_path: Path) -> None:
    path, _ = write_model(tmp_path)
    manifest = manifest_for(path)
    path.write_bytes(b"\x08\x07not an onnx model at all" * 10)
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model(manifest, path, CPU)
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(manifest, tmp_path / "gone.onnx", CPU)


def test_manifest_must_match_graph(tmp_path: Path) -> None:
    path, _ = write_model(tmp_path)
    with pytest.raises(ModelLoadError, match="not graph outputs"):
        load_model(manifest_for(path, outputs=("probabilities",)), path, CPU)
    bad_inputs = manifest_for(path).model_copy(
        update={"inputs": [TensorSpec(name="features", dtype="float32", shape=[-1, 4])]}
    )
    with pytest.raises(ModelLoadError, match="manifest inputs"):
        load_model(bad_inputs, path, CPU)
    with pytest.raises(ModelLoadError, match="format onnx"):
        load_model(manifest_for(path, fmt="torchscript"), path, CPU)


def test_concurrent_infer_and_close(tmp_path: Path) -> None:
    path, layers = write_model(tmp_path, hidden=32)
    model = load_model(manifest_for(path), path, CPU)
    xs = [np.full((3, 4), i, np.float32) for i in range(8)]
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(20):
            results[i] = model.infer({"x": xs[i]})["y"]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(xs):
        np.testing.assert_allclose(results[i], reference(layers, x), rtol=1e-5, atol=1e-4)
    model.close()
    with pytest.raises(InferenceError, match="closed"):
        model.infer({"x": xs[0]})


def test_device_choice(tmp_path: Path) -> None:
    path, _ = write_model(tmp_path)
    model = load_model(manifest_for(path), path, CPU)
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    if "cuda" in available_devices():
        pytest.skip("a GPU is present: the CPU fallback below cannot be observed")
    model = load_model(manifest_for(path), path, RuntimeSettings(device="auto"))  # auto: CPU here
    assert model.device == "cpu"
    assert model.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(ModelLoadError, match="no CUDAExecutionProvider"):  # explicit cuda: never CPU
        load_model(manifest_for(path), path, RuntimeSettings(device="cuda"))
