"""Text classification: local hashed bag-of-words featurizer in front of an ONNX classifier.

The featurizer is deterministic and dependency-free (no vocabulary file): lowercase word tokens
and adjacent-word bigrams are hashed with CRC-32 into ``dim`` buckets, counted, and the vector is
L2-normalised. The demo catalog trains its ``text-sentiment`` models on exactly these features.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from manymodels.errors import InvalidRequest
from manymodels.processors.base import Processor
from manymodels.store.manifest import ModelManifest

# Words (letters/digits, any script) with optional inner apostrophes: "don't" stays one token.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def featurize(texts: Sequence[str], dim: int) -> np.ndarray:
    """``(len(texts), dim)`` float32 rows: hashed unigram+bigram counts, L2-normalised."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        tokens = tokenize(text)
        grams = tokens + [f"{a} {b}" for a, b in zip(tokens, tokens[1:], strict=False)]
        for gram in grams:
            # crc32, not hash(): Python's str hash is salted per process.
            out[row, zlib.crc32(gram.encode("utf-8")) % dim] += 1.0
        norm = float(np.linalg.norm(out[row]))
        if norm > 0:
            out[row] /= norm
    return out


class TextClassifierProcessor(Processor):
    """``input_data``: a string or a list of strings -> one ``{label, score, scores}`` per text.

    Options: ``labels`` (required, one per model output column), ``dim`` (defaults to the
    model's feature width), ``apply_softmax`` (true when the model emits logits),
    ``max_chars`` per text (default 10000) and ``max_batch`` (default 256).
    """

    def __init__(self, manifest: ModelManifest, options: dict[str, Any]) -> None:
        super().__init__(manifest, options)
        if len(manifest.inputs) != 1 or not manifest.outputs:
            raise ValueError(f"{manifest.name}: text classifier needs one input and an output")
        spec = manifest.inputs[0]
        if spec.dtype != "float32" or len(spec.shape) != 2:
            raise ValueError(f"{manifest.name}: input must be float32 [batch, dim], got {spec}")
        self.input_name = spec.name
        self.output_name = manifest.outputs[0].name

        labels = options.get("labels")
        if (
            not isinstance(labels, list)
            or len(labels) < 2
            or not all(isinstance(x, str) for x in labels)
            or len(set(labels)) != len(labels)
        ):
            raise ValueError("option 'labels' must be a list of at least two distinct strings")
        self.labels: list[str] = labels
        width = manifest.outputs[0].shape[-1] if manifest.outputs[0].shape else -1
        if width not in (-1, len(labels)):
            raise ValueError(f"{len(labels)} labels for a model with {width} output columns")

        self.dim = int(options.get("dim", spec.shape[1]))
        if self.dim < 1 or spec.shape[1] not in (-1, self.dim):
            raise ValueError(f"option dim={self.dim} does not fit model input shape {spec.shape}")
        self.apply_softmax = bool(options.get("apply_softmax", False))
        self.max_chars = int(options.get("max_chars", 10_000))
        self.max_batch = int(options.get("max_batch", 256))

    def preprocess(self, input_data: Any) -> dict[str, np.ndarray]:
        texts = [input_data] if isinstance(input_data, str) else input_data
        if not isinstance(texts, list) or not texts:
            raise InvalidRequest("input_data must be a non-empty string or list of strings")
        if len(texts) > self.max_batch:
            raise InvalidRequest(f"at most {self.max_batch} texts per request, got {len(texts)}")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise InvalidRequest(f"input_data[{i}] must be a string, got {type(text).__name__}")
            if len(text) > self.max_chars:
                raise InvalidRequest(f"input_data[{i}] is longer than {self.max_chars} characters")
            if not tokenize(text):
                raise InvalidRequest(f"input_data[{i}] contains no words")
        return {self.input_name: featurize(texts, self.dim)}

    def postprocess(self, outputs: dict[str, np.ndarray]) -> Any:
        probs = np.asarray(outputs[self.output_name], dtype=np.float64)
        if self.apply_softmax:
            probs = np.exp(probs - probs.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
        results = []
        for row in probs:
            best = int(np.argmax(row))
            results.append(
                {
                    "label": self.labels[best],
                    "score": round(float(row[best]), 6),
                    "scores": {
                        lab: round(float(p), 6) for lab, p in zip(self.labels, row, strict=True)
                    },
                }
            )
        return results
