"""The ONNX runtime's CUDA placement, without a GPU: ORT's provider list and sessions are faked so the
cases a GPU host can hit (CUDA EP listed but falling back to CPU, or really on CUDA) run here."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from manymodels.demo.catalog import mlp_onnx
from manymodels.errors import ModelLoadError
from manymodels.runtimes import RuntimeSettings, load_model
from manymodels.runtimes import onnx as onnx_runtime
from manymodels.store.manifest import ModelManifest, TensorSpec

CUDA_LISTED = ["CUDAExecutionProvider", "CPUExecutionProvider"]


def write_model(folder: Path) -> tuple[Path, ModelManifest, list]:
    rng = np.random.default_rng(0)
    layers = [
        (rng.standard_normal((4, 8), dtype=np.float32), rng.standard_normal(8, dtype=np.float32)),
        (rng.standard_normal((8, 3), dtype=np.float32), rng.standard_normal(3, dtype=np.float32)),
    ]
    path = folder / "model.onnx"
    path.write_bytes(mlp_onnx(layers, "x", "y"))
    data = path.read_bytes()
    manifest = ModelManifest(
        name="tiny",
        version="1",
        runtime="onnx",
        format="onnx",
        artifact=path.name,
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=len(data),
        inputs=[TensorSpec(name="x", dtype="float32", shape=[-1, 4])],
        outputs=[TensorSpec(name="y", dtype="float32", shape=[-1, 3])],
    )
    return path, manifest, layers


class FakeOrt:
    """ORT as a GPU host with onnxruntime-gpu shows it: the CUDA EP listed, ``preload_dlls`` present.

    Sessions are real CPU sessions (this machine has no CUDA EP); ``lands_on_cuda`` says whether they
    report CUDA first (working GPU) or only CPU (ORT's silent fallback when the CUDA EP cannot start).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, lands_on_cuda: bool) -> None:
        self.lands_on_cuda = lands_on_cuda
        self.preloads = 0
        self.providers_asked: list[Any] = []
        real_session = ort.InferenceSession
        fake = self

        class Session(real_session):  # type: ignore[misc, valid-type]
            def __init__(self, path: str, sess_options: Any = None, providers: Any = None) -> None:
                fake.providers_asked.append(providers)
                super().__init__(path, sess_options=sess_options, providers=["CPUExecutionProvider"])

            def get_providers(self) -> list[str]:
                return CUDA_LISTED if fake.lands_on_cuda else super().get_providers()

        monkeypatch.setattr(onnx_runtime.ort, "get_available_providers", lambda: CUDA_LISTED)
        monkeypatch.setattr(onnx_runtime.ort, "InferenceSession", Session)
        monkeypatch.setattr(onnx_runtime.ort, "preload_dlls", self.preload, raising=False)
        # Fresh process state: no preload done, no fallback warned about yet.
        monkeypatch.setattr(onnx_runtime, "_cuda_libs_preloaded", False)
        monkeypatch.setattr(onnx_runtime, "_warned_cpu_fallback", False)

    def preload(self) -> None:
        self.preloads += 1


def test_explicit_cuda_that_falls_back_to_cpu_fails_the_load(tmp_path: Path, monkeypatch) -> None:
    path, manifest, _ = write_model(tmp_path)
    fake = FakeOrt(monkeypatch, lands_on_cuda=False)
    for _ in range(2):
        with pytest.raises(ModelLoadError, match="tiny:1: runtime.device is cuda but .*fell back to CPU"):
            load_model(manifest, path, RuntimeSettings(device="cuda"))
    assert fake.preloads == 1  # once per process, before the first CUDA session


def test_auto_that_falls_back_reports_cpu_and_warns_once(tmp_path: Path, monkeypatch, caplog) -> None:
    path, manifest, layers = write_model(tmp_path)
    fake = FakeOrt(monkeypatch, lands_on_cuda=False)
    with caplog.at_level(logging.WARNING, logger=onnx_runtime.__name__):
        models = [load_model(manifest, path, RuntimeSettings(device="auto")) for _ in range(2)]
    assert [m.device for m in models] == ["cpu", "cpu"]
    assert sum("fell back to CPU" in r.getMessage() for r in caplog.records) == 1
    x = np.ones((2, 4), np.float32)
    (w1, b1), (w2, b2) = layers
    want = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    np.testing.assert_allclose(models[0].infer({"x": x})["y"], want, rtol=1e-5)
    assert fake.preloads == 1


@pytest.mark.parametrize("device", ["auto", "cuda"])
def test_working_cuda_ep_is_reported_and_configured(tmp_path: Path, monkeypatch, device: str) -> None:
    path, manifest, _ = write_model(tmp_path)
    fake = FakeOrt(monkeypatch, lands_on_cuda=True)
    model = load_model(manifest, path, RuntimeSettings(device=device))
    assert model.device == "cuda"
    (asked,) = fake.providers_asked
    assert asked[1] == "CPUExecutionProvider"
    name, options = asked[0]
    assert name == "CUDAExecutionProvider"
    # No per-shape cuDNN autotuning inside requests; no arena that doubles past memory_bytes().
    assert options["cudnn_conv_algo_search"] == "HEURISTIC"
    assert options["arena_extend_strategy"] == "kSameAsRequested"


def test_a_failing_preload_is_logged_and_the_session_check_decides(
    tmp_path: Path, monkeypatch, caplog
) -> None:
    path, manifest, _ = write_model(tmp_path)
    FakeOrt(monkeypatch, lands_on_cuda=False)

    def broken() -> None:
        raise OSError("libcudnn.so.9: cannot open shared object file")

    monkeypatch.setattr(onnx_runtime.ort, "preload_dlls", broken)
    with (
        caplog.at_level(logging.WARNING, logger=onnx_runtime.__name__),
        pytest.raises(ModelLoadError, match="fell back to CPU"),
    ):
        load_model(manifest, path, RuntimeSettings(device="cuda"))
    assert any("libcudnn.so.9" in r.getMessage() for r in caplog.records)


def test_explicit_cuda_without_a_cuda_provider_fails(tmp_path: Path, monkeypatch) -> None:
    path, manifest, _ = write_model(tmp_path)
    monkeypatch.setattr(onnx_runtime.ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ModelLoadError, match="no CUDAExecutionProvider .*install onnxruntime-gpu"):
        load_model(manifest, path, RuntimeSettings(device="cuda"))
    assert load_model(manifest, path, RuntimeSettings(device="auto")).device == "cpu"
