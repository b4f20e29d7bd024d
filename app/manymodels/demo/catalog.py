"""Generate a demo model store: a trained text classifier, MLPs of many sizes, torch models.

    python -m manymodels.demo.catalog --out DIR [--mlp N] [--no-torch] [--seed S]

Models (all float32, batch dimension -1):

* ``text-sentiment`` v1 (logistic regression) and v2 (512->16->2 MLP), aliases stable=1,
  canary=2: ``features`` [-1, 512] -> ``probabilities`` [-1, 2] (negative, positive). Trained
  here on :mod:`manymodels.demo.text_data`; serve it with :data:`TEXT_PROCESSOR`.
* ``mlp-000`` ... : ``input`` [-1, 64] -> ``logits`` [-1, 10], hidden widths 32..2048 spread
  geometrically and shuffled across names; every fourth also has a v2 (aliases stable=1,
  canary=2).
* ``torch-mlp`` (torch_export): ``input`` [-1, 64] -> ``logits`` [-1, 10].
* ``torch-script`` (torchscript): ``input`` [-1, 64] -> ``logits``, ``probabilities`` [-1, 10].
* ``torch-state`` (torch_state_dict, weights only): ``input`` [-1, 64] -> ``logits`` [-1, 10]; serve it
  with :data:`TORCH_STATE` (the module class comes from the package, not the store).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from manymodels.demo.text_data import LABELS, dataset
from manymodels.processors.text import featurize
from manymodels.store import publish_version, set_store_aliases
from manymodels.store.manifest import TensorSpec

TEXT_DIM = 512
MLP_IN, MLP_OUT = 64, 10
# What the serve config should attach to text-sentiment.
TEXT_PROCESSOR: dict[str, Any] = {
    "processor": "manymodels.processors.text:TextClassifierProcessor",
    "processor_options": {"labels": LABELS, "dim": TEXT_DIM},
}
# The serve-config entry the ``torch-state`` model needs (its architecture is code from the image).
TORCH_STATE: dict[str, Any] = {
    "module": "manymodels.demo.modules:MLP",
    "module_options": {"hidden": 96},
}

Layers = list[tuple[np.ndarray, np.ndarray]]


def _spec(name: str, width: int) -> TensorSpec:
    return TensorSpec(name=name, dtype="float32", shape=[-1, width])


def mlp_onnx(layers: Layers, input_name: str, output_name: str, softmax: bool = False) -> bytes:
    """Gemm(+Relu) stack as a serialized ONNX model with a dynamic batch dimension."""
    nodes, inits, prev = [], [], input_name
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        out = (f"{output_name}_logits" if softmax else output_name) if last else f"h{i}"
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [out]))
        if not last:
            nodes.append(helper.make_node("Relu", [out], [f"r{i}"]))
            out = f"r{i}"
        prev = out
    if softmax:
        nodes.append(helper.make_node("Softmax", [prev], [output_name], axis=-1))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [
            helper.make_tensor_value_info(
                input_name, TensorProto.FLOAT, ["batch", layers[0][0].shape[0]]
            )
        ],
        [
            helper.make_tensor_value_info(
                output_name, TensorProto.FLOAT, ["batch", layers[-1][0].shape[1]]
            )
        ],
        inits,
    )
    # Pinned IR/opset so artifacts load on older onnxruntime builds too.
    model = helper.make_model(
        graph, producer_name="manymodels-demo", opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _init(rng: np.random.Generator, sizes: list[int]) -> Layers:
    # He initialisation keeps activations in range whatever the width.
    return [
        (
            (rng.standard_normal((a, b)) * np.sqrt(2.0 / a)).astype(np.float32),
            np.zeros(b, dtype=np.float32),
        )
        for a, b in zip(sizes, sizes[1:], strict=False)
    ]


def train_sentiment(hidden: int, seed: int, steps: int = 400) -> Layers:
    """Full-batch gradient descent with softmax cross-entropy and a little L2; ~0.1 s."""
    texts, labels = dataset()
    x = featurize(texts, TEXT_DIM).astype(np.float64)
    y = np.eye(len(LABELS))[labels]
    rng = np.random.default_rng(seed)
    sizes = [TEXT_DIM, hidden, len(LABELS)] if hidden else [TEXT_DIM, len(LABELS)]
    params = [(w.astype(np.float64), b.astype(np.float64)) for w, b in _init(rng, sizes)]
    lr, l2 = 0.5, 1e-4
    for _ in range(steps):
        acts = [x]
        for i, (w, b) in enumerate(params):
            z = acts[-1] @ w + b
            acts.append(np.maximum(z, 0) if i < len(params) - 1 else z)
        logits = acts[-1] - acts[-1].max(axis=1, keepdims=True)
        p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        grad = (p - y) / len(x)
        new = []
        for i in range(len(params) - 1, -1, -1):
            w, b = params[i]
            gw, gb = acts[i].T @ grad + l2 * w, grad.sum(axis=0)
            if i:  # ReLU backward into the previous layer
                grad = (grad @ w.T) * (acts[i] > 0)
            new.append((w - lr * gw, b - lr * gb))
        params = new[::-1]
    return [(w.astype(np.float32), b.astype(np.float32)) for w, b in params]


def mlp_widths(n: int, seed: int) -> list[int]:
    """``n`` distinct hidden widths (multiples of 8, geometric over 32..~2048), shuffled."""
    if n <= 0:
        return []
    exps = np.linspace(0.0, 6.0, n) if n > 1 else np.zeros(1)
    widths: list[int] = []
    for e in exps:
        # Rounding to multiples of 8 can collide at the low end; keep every width distinct.
        widths.append(max(int(round(32 * 2**e / 8) * 8), widths[-1] + 8 if widths else 0))
    rng = np.random.default_rng(seed)
    return [widths[i] for i in rng.permutation(n)]


def build_demo_catalog(
    root: Path, *, n_mlp: int = 30, with_torch: bool = True, seed: int = 0
) -> list[str]:
    """Publish the demo models under ``root`` and return their names."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names: list[str] = []
    with tempfile.TemporaryDirectory(prefix="manymodels-demo-") as tmp:
        work = Path(tmp)

        def publish_onnx(
            model: str, version: str, data: bytes, inputs: list, outputs: list, desc: str
        ) -> None:
            src = _fresh(work / model / version / "model.onnx")
            src.write_bytes(data)
            publish_version(
                root,
                model,
                version,
                runtime="onnx",
                artifact=src,
                inputs=inputs,
                outputs=outputs,
                description=desc,
            )

        text_in, text_out = [_spec("features", TEXT_DIM)], [_spec("probabilities", len(LABELS))]
        for version, hidden, desc in (("1", 0, "logistic regression"), ("2", 16, "512-16-2 MLP")):
            layers = train_sentiment(hidden, seed + int(version))
            data = mlp_onnx(layers, "features", "probabilities", softmax=True)
            publish_onnx(
                "text-sentiment",
                version,
                data,
                text_in,
                text_out,
                f"English review sentiment, hashed bag-of-words {desc}",
            )
        set_store_aliases(root, "text-sentiment", {"stable": "1", "canary": "2"})
        names.append("text-sentiment")

        mlp_in, mlp_out = [_spec("input", MLP_IN)], [_spec("logits", MLP_OUT)]
        for i, width in enumerate(mlp_widths(n_mlp, seed)):
            name = f"mlp-{i:03d}"
            versions = ("1", "2") if i % 4 == 0 else ("1",)
            for version in versions:
                rng = np.random.default_rng([seed, i, int(version)])
                data = mlp_onnx(_init(rng, [MLP_IN, width, MLP_OUT]), "input", "logits")
                publish_onnx(name, version, data, mlp_in, mlp_out, f"random MLP 64-{width}-10")
            if len(versions) == 2:
                set_store_aliases(root, name, {"stable": "1", "canary": "2"})
            names.append(name)

        if with_torch:
            names += _build_torch(root, work, seed)
    return names


def _build_torch(root: Path, work: Path, seed: int) -> list[str]:
    import torch

    torch.manual_seed(seed)
    inp = [_spec("input", MLP_IN)]

    mlp = torch.nn.Sequential(
        torch.nn.Linear(MLP_IN, 128), torch.nn.ReLU(), torch.nn.Linear(128, MLP_OUT)
    ).eval()
    example = (torch.randn(2, MLP_IN),)
    program = torch.export.export(mlp, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    src = _fresh(work / "torch-mlp" / "model.pt2")
    torch.export.save(program, str(src))
    publish_version(
        root,
        "torch-mlp",
        "1",
        runtime="torch",
        format="torch_export",
        artifact=src,
        inputs=inp,
        outputs=[_spec("logits", MLP_OUT)],
        description="64-128-10 MLP, torch.export",
    )

    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Linear(MLP_IN, 64), torch.nn.ReLU())
            self.head = torch.nn.Linear(64, MLP_OUT)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.head(self.body(x))
            return logits, torch.softmax(logits, dim=-1)

    src = _fresh(work / "torch-script" / "model.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        # trace, not script: the graph has no control flow and tracing needs no source access.
        torch.jit.trace(TwoHeads().eval(), example).save(str(src))
    publish_version(
        root,
        "torch-script",
        "1",
        runtime="torch",
        format="torchscript",
        artifact=src,
        inputs=inp,
        outputs=[_spec("logits", MLP_OUT), _spec("probabilities", MLP_OUT)],
        description="64-64-10 MLP returning logits and softmax, TorchScript",
    )
    from manymodels.demo.modules import MLP

    src = _fresh(work / "torch-state" / "weights.pt")
    torch.save(MLP(**TORCH_STATE["module_options"]).state_dict(), str(src))
    publish_version(
        root,
        "torch-state",
        "1",
        runtime="torch",
        format="torch_state_dict",
        artifact=src,
        inputs=inp,
        outputs=[_spec("logits", MLP_OUT)],
        description="64-96-10 MLP state dict; module class manymodels.demo.modules:MLP",
    )
    return ["torch-mlp", "torch-script", "torch-state"]


def _fresh(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="store root to write into")
    parser.add_argument("--mlp", type=int, default=30, help="number of mlp-NNN models")
    parser.add_argument("--no-torch", action="store_true", help="skip the torch models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names = build_demo_catalog(
        args.out, n_mlp=args.mlp, with_torch=not args.no_torch, seed=args.seed
    )
    print(f"wrote {len(names)} models to {args.out}: {', '.join(names)}")


if __name__ == "__main__":
    main()
