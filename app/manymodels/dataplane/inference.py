"""Running a loaded model on checked inputs: inline or in a thread, and what its failures mean.

A model that answers faster than a thread hop (``inline_infer_max_ms``) runs on the event loop; the
rest run in a pool. An exception from the model is the server's fault, not the client's (the inputs
passed ``check_inputs``): 500 naming the model and version, or 503 with ``Retry-After`` when it ran out
of memory. A model with ``batching`` options goes through its version's batch queue (``batching``),
which runs the stacked requests through the same path.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from manymodels.dataplane.batching import Batcher
from manymodels.dataplane.served import ServedModel
from manymodels.errors import InferenceError, ManyModelsError, OutOfMemory
from manymodels.metrics import Metrics

# How ONNX Runtime (CPU/CUDA arenas) and CUDA itself word an allocation failure.
_OOM_MESSAGE = re.compile(
    r"out of memory|failed to allocate memory|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation"
    r"|CUBLAS_STATUS_ALLOC_FAILED|bad_alloc",
    re.IGNORECASE,
)


def is_out_of_memory(exc: BaseException) -> bool:
    # torch.OutOfMemoryError (torch.cuda.OutOfMemoryError) matched by name: torch is optional.
    return (
        isinstance(exc, MemoryError)
        or type(exc).__name__ == "OutOfMemoryError"
        or bool(_OOM_MESSAGE.search(str(exc)))
    )


def model_failure(served: ServedModel, exc: BaseException) -> ManyModelsError:
    where = f"model {served.manifest.name} version {served.manifest.version}"
    if is_out_of_memory(exc):
        return OutOfMemory(f"{where} ran out of memory on this request: {exc}")
    return InferenceError(f"{where} failed at inference: {type(exc).__name__}: {exc}")


class Inference:
    def __init__(self, threads: int = 4, metrics: Metrics | None = None) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mm-infer")
        self.batcher = Batcher(self._execute, metrics)

    def run(
        self, served: ServedModel, inputs: dict[str, np.ndarray], *, inline_max_ms: float
    ) -> Awaitable[dict[str, np.ndarray]]:
        # Not a coroutine itself: it hands back the one to await (one coroutine less per request).
        if served.options.batching is not None:
            return self.batcher.run(served, inputs, inline_max_ms)
        return self._execute(served, inputs, inline_max_ms)

    async def _execute(
        self, served: ServedModel, inputs: dict[str, np.ndarray], inline_max_ms: float
    ) -> dict[str, np.ndarray]:
        try:
            if served.latency_ms <= inline_max_ms:
                return served.timed_infer(inputs)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool, served.timed_infer, inputs)
        except ManyModelsError:
            raise
        except Exception as exc:
            raise model_failure(served, exc) from exc

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
