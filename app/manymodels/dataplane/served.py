"""A model version resident in a replica: what the loader builds and the request path runs."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from manymodels.config import ModelOptions
from manymodels.processors import Processor
from manymodels.runtimes import LoadedModel
from manymodels.store.manifest import ModelManifest

_EWMA = 0.2


@dataclass(eq=False)
class ServedModel:
    """A resident model version. Requests hold it between ``acquire`` and ``release``; once it has
    left the cache (``retire``) it is closed when the last of them releases it."""

    manifest: ModelManifest
    model: LoadedModel
    processor: Processor | None
    options: ModelOptions
    latency_ms: float = field(default=0.0)
    users: int = 0
    retired: bool = False
    closed: bool = False
    on_close: Callable[[], None] | None = field(default=None, repr=False)  # memory was freed

    def timed_infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Timed where it runs, so waiting for a pool thread never makes a model look slow.
        t0 = time.perf_counter()
        outputs = self.model.infer(inputs)
        self.latency_ms += _EWMA * ((time.perf_counter() - t0) * 1000 - self.latency_ms)
        return outputs

    def acquire(self) -> bool:
        if self.closed:
            return False
        self.users += 1
        return True

    def release(self) -> None:
        self.users -= 1
        if self.retired and self.users == 0:
            self.close()

    def retire(self) -> None:
        self.retired = True
        if self.users == 0:
            self.close()

    def __del__(self) -> None:
        # A model the cache did not admit is never retired: it closes when its last request drops it.
        if not self.closed:
            with contextlib.suppress(Exception):  # also at interpreter exit
                self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.model.close()  # torch on CUDA also hands the freed blocks back to the driver
            if self.on_close is not None:
                self.on_close()
