"""Processors: the place for per-model business logic around a model's tensors.

A processor turns the JSON a client sends to ``/predict`` into the model's input tensors, and
the model's output tensors into the JSON the client gets back. The model itself (ONNX or torch)
only ever sees numpy arrays; tokenizers, feature extraction, label maps, thresholds and
response shaping live here.

Writing one
-----------
Subclass :class:`Processor` and override ``preprocess`` and/or ``postprocess``::

    # mycompany/processors.py  (a module shipped in the serving image)
    import numpy as np
    from manymodels.errors import InvalidRequest
    from manymodels.processors.base import Processor

    class ChurnScorer(Processor):
        def __init__(self, manifest, options):
            super().__init__(manifest, options)
            self.threshold = float(options.get("threshold", 0.5))  # validate options here

        def preprocess(self, input_data):
            if not isinstance(input_data, dict) or "tenure" not in input_data:
                raise InvalidRequest("expected an object with 'tenure'")
            row = [input_data["tenure"], input_data.get("spend", 0.0)]
            return {"features": np.asarray([row], dtype=np.float32)}

        def postprocess(self, outputs):
            p = float(outputs["probability"][0, 0])
            return {"churn": p >= self.threshold, "probability": round(p, 4)}

Rules
-----
* ``__init__(manifest, options)`` runs once per loaded model version. ``manifest`` is the
  model's :class:`~manymodels.store.manifest.ModelManifest` (input/output names, dtypes,
  shapes); ``options`` is the free-form mapping from the serve config. Validate options here and
  raise ``ValueError`` on bad configuration, so mistakes fail at deploy time, not per request.
* ``preprocess(input_data)`` gets the decoded ``"input_data"`` value of the request (any JSON
  value) and returns ``{input_name: np.ndarray}`` matching the manifest's dtypes and shapes.
  Raise :class:`~manymodels.errors.InvalidRequest` for bad input: it becomes an HTTP 400 with
  your message; any other exception is a 500.
* ``postprocess(outputs)`` gets ``{output_name: np.ndarray}`` and returns something JSON
  serialisable (plain ``dict``/``list``/``str``/``int``/``float``/``bool``; convert numpy
  scalars with ``float()``/``.tolist()``).
* Both may be called from several threads at once: keep per-request state in locals.
* Processors are code, so they are never loaded from the model store. Ship the module in the
  image and reference it from the serve config by import path, ``"package.module:ClassName"``,
  with its options, e.g. ``{"processor": "mycompany.processors:ChurnScorer",
  "options": {"threshold": 0.7}}``.

The base class itself is the default processor: it maps JSON arrays straight onto tensors
(``input_data`` is the array for a single-input model, or ``{input_name: array}``; a single
example may omit the batch dimension) and returns ``{output_name: nested list}``.

Whatever ``preprocess`` returns is checked against the manifest by the data plane (dtype, rank,
dimensions, ``limits.max_batch``, NaN/infinity unless the model's ``allow_nonfinite``), exactly as
tensors from the other endpoints are, so a processor need not repeat those checks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from manymodels.errors import InvalidRequest
from manymodels.imports import import_object
from manymodels.store.manifest import ModelManifest, TensorSpec


class Processor:
    """Default processor: JSON arrays in, ``{output_name: list}`` out. Subclass to customise."""

    def __init__(self, manifest: ModelManifest, options: dict[str, Any]) -> None:
        self.manifest = manifest
        self.options = dict(options)

    def preprocess(self, input_data: Any) -> dict[str, np.ndarray]:
        specs = self.manifest.inputs
        if isinstance(input_data, dict):
            names = {s.name for s in specs}
            if set(input_data) != names:
                raise InvalidRequest(
                    f"input_data must have exactly the keys {sorted(names)}, "
                    f"got {sorted(map(str, input_data))}"
                )
            return {s.name: self._tensor(s, input_data[s.name]) for s in specs}
        if len(specs) != 1:
            raise InvalidRequest(
                f"model has inputs {[s.name for s in specs]}: send input_data as an object"
            )
        return {specs[0].name: self._tensor(specs[0], input_data)}

    def postprocess(self, outputs: dict[str, np.ndarray]) -> Any:
        return {name: np.asarray(value).tolist() for name, value in outputs.items()}

    def _tensor(self, spec: TensorSpec, value: Any) -> np.ndarray:
        if isinstance(value, (str, bytes, dict)) or value is None:
            raise InvalidRequest(f"input {spec.name!r} must be an array")
        try:
            raw = np.asarray(value)
        except (ValueError, TypeError) as exc:  # ragged nesting
            raise InvalidRequest(f"input {spec.name!r} is not a rectangular array") from exc
        arr = raw.astype(object) if spec.dtype == "bytes" else _cast(spec, raw)
        # A single example without its batch dimension: add it, clients rarely wrap one row.
        if spec.shape and spec.shape[0] == -1 and arr.ndim == len(spec.shape) - 1:
            arr = arr[np.newaxis, ...]
        return arr


def _cast(spec: TensorSpec, raw: np.ndarray) -> np.ndarray:
    """Cast without numpy's silent surprises: "1.5" -> 1.5, 2.7 -> int 2, 300 -> int8 44."""
    dtype = np.dtype(spec.dtype)
    allowed = {"b": "b", "i": "biu", "u": "biu", "f": "biuf"}[dtype.kind]
    if raw.size and raw.dtype.kind not in allowed:
        raise InvalidRequest(f"input {spec.name!r} must hold {spec.dtype} values, got {raw.dtype}")
    with np.errstate(over="ignore"):  # float overflow becomes inf, refused by the caller
        arr = raw.astype(dtype)
    if dtype.kind in "iu" and raw.size and not np.array_equal(arr, raw):
        raise InvalidRequest(f"input {spec.name!r} has values out of range for {spec.dtype}")
    return arr


def load_processor_class(import_path: str) -> type[Processor]:
    """Import ``"package.module:ClassName"`` and check that it is a :class:`Processor` subclass."""
    obj = import_object(import_path, "processor")
    if not (isinstance(obj, type) and issubclass(obj, Processor)):
        raise ValueError(
            f"processor {import_path!r} is not a subclass of manymodels.processors.base.Processor"
        )
    return obj
