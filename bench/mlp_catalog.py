"""ONNX MLPs for the benchmarks: write one, publish it into a local store, time its raw session.run."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from manymodels.demo.catalog import _init, mlp_onnx
from manymodels.store import TensorSpec, publish_version


def write_mlp(artifact: Path, sizes: list[int], rng: np.random.Generator) -> Path:
    """An MLP ``sizes[0] -> ... -> sizes[-1]`` (input ``input``, output ``logits``) at ``artifact``."""
    artifact.write_bytes(mlp_onnx(_init(rng, sizes), "input", "logits"))
    return artifact


def publish_mlp(root: Path, name: str, artifact: Path, sizes: list[int]) -> None:
    """Publish ``artifact`` as version 1 of ``name``, with a dynamic batch dimension."""
    publish_version(
        root,
        name,
        "1",
        runtime="onnx",
        artifact=artifact,
        inputs=[TensorSpec(name="input", dtype="float32", shape=[-1, sizes[0]])],
        outputs=[TensorSpec(name="logits", dtype="float32", shape=[-1, sizes[-1]])],
    )


def session_run_ms(artifact: Path, row: np.ndarray, runs: int) -> float:
    """Median ms of ``session.run`` on ``row`` (ONNX Runtime, one thread each way, after 20 warm-ups)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(artifact), options, providers=["CPUExecutionProvider"])
    for _ in range(20):
        session.run(None, {"input": row})
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(None, {"input": row})
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)
