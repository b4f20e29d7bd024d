from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from manymodels.demo.catalog import TEXT_PROCESSOR
from manymodels.demo.text_data import dataset
from manymodels.errors import InvalidRequest
from manymodels.processors.text import TextClassifierProcessor, featurize, tokenize
from manymodels.runtimes import RuntimeSettings, load_model
from manymodels.store import LocalStore
from manymodels.store.manifest import ModelManifest, TensorSpec

OPTIONS = TEXT_PROCESSOR["processor_options"]
# Not in the training set; each uses words the training sentences do.
HELD_OUT = [
    ("great quality, I love it", "positive"),
    ("really happy, works perfectly", "positive"),
    ("excellent, highly recommend", "positive"),
    ("broken and useless, waste of money", "negative"),
    ("not worth it, very disappointed", "negative"),
]


def test_tokenize() -> None:
    assert tokenize("Don't STOP me now!! 2 times, café") == [
        "don't",
        "stop",
        "me",
        "now",
        "2",
        "times",
        "café",
    ]
    assert tokenize("  ...  ") == []


def test_featurize_shape_norm_and_bigrams() -> None:
    feats = featurize(["I love this product", "product this love I"], 512)
    assert feats.shape == (2, 512) and feats.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, rtol=1e-6)
    # same words, different bigrams -> different vectors
    assert not np.allclose(feats[0], feats[1])
    assert np.array_equal(featurize(["I love this product"], 512)[0], feats[0])


def test_featurize_is_stable_across_processes() -> None:
    # Python's hash() is salted per process (this one's salt is random); the features must not be.
    code = (
        "import sys; from manymodels.processors.text import featurize; "
        "sys.stdout.write(featurize(['Love it, broken!'], 64).tobytes().hex())"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    child = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert child.returncode == 0, child.stderr
    assert child.stdout == featurize(["Love it, broken!"], 64).tobytes().hex()


@pytest.fixture(scope="module")
def sentiment(demo_catalog: Path) -> dict[str, Any]:
    store = LocalStore(demo_catalog)
    out = {}
    for version in ("1", "2"):
        manifest = store.manifest("text-sentiment", version)
        model = load_model(
            manifest, store.fetch("text-sentiment", version), RuntimeSettings(device="cpu")
        )
        out[version] = (TextClassifierProcessor(manifest, OPTIONS), model)
    return out


def classify(pair: tuple[TextClassifierProcessor, Any], data: Any) -> Any:
    proc, model = pair
    return proc.postprocess(model.infer(proc.preprocess(data)))


@pytest.mark.parametrize("version", ["1", "2"])
def test_classifier_gets_sentences_right(sentiment: dict, version: str) -> None:
    pair = sentiment[version]
    [love] = classify(pair, "I love this product")
    assert love["label"] == "positive" and love["score"] > 0.6
    assert set(love["scores"]) == {"negative", "positive"}
    assert abs(sum(love["scores"].values()) - 1.0) < 1e-4
    assert love["score"] == max(love["scores"].values())
    [bad] = classify(pair, "terrible, broken, waste of money")
    assert bad["label"] == "negative" and bad["score"] > 0.6

    texts, labels = dataset()
    results = classify(pair, texts)
    accuracy = np.mean(
        [r["label"] == OPTIONS["labels"][y] for r, y in zip(results, labels, strict=True)]
    )
    assert accuracy >= 0.95
    held = classify(pair, [t for t, _ in HELD_OUT])
    assert [r["label"] for r in held] == [label for _, label in HELD_OUT]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (42, "non-empty string or list"),
        ({"text": "hi"}, "non-empty string or list"),
        ([], "non-empty string or list"),
        ("", "contains no words"),
        ("?! ...", "contains no words"),
        (["fine", 3], r"input_data\[1\] must be a string"),
        (["ok"] * 300, "at most 256"),
        ("a" * 10_001, "longer than 10000"),
    ],
)
def test_bad_input_is_invalid_request(sentiment: dict, data: Any, message: str) -> None:
    proc, _ = sentiment["1"]
    with pytest.raises(InvalidRequest, match=message):
        proc.preprocess(data)


def text_manifest(dim: int = 512, classes: int = 2) -> ModelManifest:
    return ModelManifest(
        name="t",
        version="1",
        runtime="onnx",
        artifact="model.onnx",
        sha256="0" * 64,
        size_bytes=0,
        inputs=[TensorSpec(name="features", dtype="float32", shape=[-1, dim])],
        outputs=[TensorSpec(name="probabilities", dtype="float32", shape=[-1, classes])],
    )


@pytest.mark.parametrize(
    ("options", "manifest", "message"),
    [
        ({}, text_manifest(), "labels"),
        ({"labels": ["only"]}, text_manifest(), "labels"),
        ({"labels": ["a", "a"]}, text_manifest(), "labels"),
        ({"labels": ["a", "b", "c"]}, text_manifest(), "3 labels for a model with 2"),
        ({"labels": ["a", "b"], "dim": 256}, text_manifest(), "dim=256"),
    ],
)
def test_bad_options(options: dict, manifest: ModelManifest, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TextClassifierProcessor(manifest, options)


def test_softmax_option_and_dim_default() -> None:
    proc = TextClassifierProcessor(
        text_manifest(dim=128), {"labels": ["no", "yes"], "apply_softmax": True}
    )
    assert proc.preprocess("hello")["features"].shape == (1, 128)
    [result] = proc.postprocess({"probabilities": np.array([[0.0, np.log(3.0)]], np.float32)})
    assert result["label"] == "yes" and result["score"] == pytest.approx(0.75, abs=1e-6)
