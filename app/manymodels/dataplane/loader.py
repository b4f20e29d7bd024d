"""Model versions in and out of the memory cache: fetch, build (runtime + processor), warm up, back
off after a failure, and close what leaves the cache once no request is using it.

Everything here runs on the serving event loop except the blocking load itself (a thread pool).
"""

from __future__ import annotations

import asyncio
import functools
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from manymodels.cache import ModelCache
from manymodels.config import ModelOptions, ServerConfig
from manymodels.dataplane.batching import check_batchable
from manymodels.dataplane.live_catalog import LiveCatalog
from manymodels.dataplane.served import ServedModel
from manymodels.errors import (
    ArtifactIntegrityError,
    CacheFull,
    ConfigurationError,
    ManyModelsError,
    ModelLoadError,
)
from manymodels.imports import import_object
from manymodels.metrics import Metrics
from manymodels.process_memory import HEAP_TRIMMER, pin_mmap_threshold
from manymodels.processors import Processor, load_processor_class
from manymodels.runtimes import load_model
from manymodels.store.manifest import TensorSpec

# A version that failed verification or loading is not retried on every request for this long.
FAILED_LOAD_BACKOFF_S = 5.0


def cache_key(model: str, version: str) -> str:
    return f"{model}:{version}"


def code_for(options: ModelOptions) -> tuple[type[Processor] | None, Any]:
    """The processor class and torch module class ``options`` name, imported (ConfigurationError)."""
    try:
        processor = load_processor_class(options.processor) if options.processor else None
        module = import_object(options.module, "torch module") if options.module else None
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from exc
    return processor, module


class ModelLoader:
    def __init__(self, live: LiveCatalog, config: ServerConfig, metrics: Metrics) -> None:
        self.live = live
        self.config = config  # replaced by the data plane on reconfigure
        self.metrics = metrics
        self.cache: ModelCache[ServedModel] = ModelCache(
            config.cache.capacity_bytes,
            policy=config.cache.policy,
            on_evict=lambda _key, served: served.retire(),
        )
        self._failed: dict[str, tuple[float, ManyModelsError]] = {}
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mm-load")
        if config.runtime.heap_trim_interval_s > 0:
            pin_mmap_threshold()  # process-wide, from the replica's start: see process_memory.py

    def failure(self, model: str, version: str) -> ManyModelsError | None:
        """The error of a load that failed within the back-off window, if any."""
        failed = self._failed.get(cache_key(model, version))
        return failed[1] if failed and failed[0] > time.monotonic() else None

    async def get(self, model: str, version: str, options: ModelOptions | None = None) -> ServedModel:
        """The resident version, loading it if needed, acquired for the caller (``release`` it)."""
        key = cache_key(model, version)
        for _ in range(3):  # a value that was closed between its load and this call: load again
            failed = self.failure(model, version)
            if failed is not None:
                raise failed
            try:
                served = await self.cache.get_or_load(key, lambda: self._load(model, version, options))
            except (ArtifactIntegrityError, ModelLoadError, ConfigurationError, CacheFull) as exc:
                self._failed[key] = (time.monotonic() + FAILED_LOAD_BACKOFF_S, exc)
                raise
            # Not admitted by the cache: every waiter of this load still gets it, and it closes when
            # the last of them drops it (ServedModel.__del__).
            if served.acquire():
                return served
        raise ModelLoadError(f"model {model} version {version} keeps leaving the cache")

    def resident_models(self) -> list[ServedModel]:
        return [s for s in map(self.cache.peek, self.cache.keys()) if s is not None]

    def budget_changed(self) -> None:
        """A model refused as too big for the old budget may fit the new one: retry it at once."""
        self._failed = {k: f for k, f in self._failed.items() if not isinstance(f[1], CacheFull)}

    async def prefetch(self, model: str, version: str, *, retry: bool = False) -> None:
        if retry:
            self._failed.pop(cache_key(model, version), None)
        await self.cache.prefetch(cache_key(model, version), lambda: self._load(model, version))

    def unload(self, model: str | None = None) -> int:
        """Drop every resident version of ``model`` (all models if None); closed once unused."""
        keys = [k for k, _ in self.cache.resident() if model is None or k.partition(":")[0] == model]
        if model is None:  # a store switch: loads still running from the old store are not kept either
            keys += self.cache.loading_keys()
            self._failed.clear()
        return sum(self.cache.discard(k) for k in keys)

    async def _load(
        self, model: str, version: str, options: ModelOptions | None = None
    ) -> tuple[ServedModel, int]:
        opts = options or self.config.models.get(model) or ModelOptions()
        loop = asyncio.get_running_loop()
        served = await loop.run_in_executor(self._pool, self._load_blocking, model, version, opts)
        return served, served.model.memory_bytes()

    def _load_blocking(self, model: str, version: str, options: ModelOptions) -> ServedModel:
        started = time.perf_counter()
        store = self.live.store
        manifest = store.manifest(model, version)
        if options.batching is not None:
            check_batchable(manifest)
        path = store.fetch(model, version)
        processor_class, module_class = code_for(options)
        factory = functools.partial(module_class, **options.module_options) if module_class else None
        loaded = load_model(manifest, path, self.config.runtime, module_factory=factory)
        where = f"model {model} version {version}"
        try:
            processor = None
            if processor_class is not None:
                try:
                    processor = processor_class(manifest, options.processor_options)
                except Exception as exc:
                    raise ConfigurationError(f"{where}: processor {options.processor}: {exc}") from exc
            served = ServedModel(manifest, loaded, processor, options, on_close=self._freed)
            # Warm up (first-run allocations) and measure, so the first request is fast and the
            # inline-vs-thread decision has a number to go on.
            t0 = time.perf_counter()
            loaded.infer({s.name: _example(s) for s in manifest.inputs})
            served.latency_ms = (time.perf_counter() - t0) * 1000
        except Exception as exc:
            loaded.close()
            if isinstance(exc, ManyModelsError):
                raise
            raise ModelLoadError(f"{where}: warm-up run failed: {exc}") from exc
        self.metrics.loads.labels(self.metrics.replica, model).observe(time.perf_counter() - started)
        return served

    def _freed(self) -> None:
        # A closed model's memory is back in malloc's heaps, not yet in the OS's: trim them soon.
        HEAP_TRIMMER.request(self.config.runtime.heap_trim_interval_s)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _example(spec: TensorSpec) -> np.ndarray:
    shape = [1 if d < 0 else d for d in spec.shape]
    return np.zeros(shape, dtype=spec.dtype)
