"""Protocol-agnostic model operations: infer, ready, metadata, load, unload, live reconfiguration.

``/predict``, the OIP routes and any future gRPC front call these functions; nothing here knows
about HTTP or Ray. All coroutines run on one event loop (the replica's serving loop): the cache's
single-flight futures belong to it. Blocking work (fetch, verify, load) runs in a thread pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from manymodels import __version__
from manymodels.cache import ModelCache
from manymodels.codec import decode_input_data, encode_outputs
from manymodels.config import ModelOptions, ServerConfig
from manymodels.errors import (
    ArtifactIntegrityError,
    InvalidRequest,
    ManyModelsError,
    ModelLoadError,
)
from manymodels.imports import import_object
from manymodels.metrics import Metrics
from manymodels.processors import Processor, load_processor_class
from manymodels.runtimes import LoadedModel, load_model
from manymodels.store import Catalog, open_store
from manymodels.store.manifest import ModelManifest, TensorSpec

log = logging.getLogger("manymodels")

# A version that failed verification or loading is not retried on every request for this long.
FAILED_LOAD_BACKOFF_S = 5.0
_EWMA = 0.2


@dataclass
class ServedModel:
    manifest: ModelManifest
    model: LoadedModel
    processor: Processor | None
    options: ModelOptions
    latency_ms: float = field(default=0.0)

    def timed_infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Timed where it runs, so waiting for a pool thread never makes a model look slow.
        t0 = time.perf_counter()
        outputs = self.model.infer(inputs)
        self.latency_ms += _EWMA * ((time.perf_counter() - t0) * 1000 - self.latency_ms)
        return outputs


def _example(spec: TensorSpec) -> np.ndarray:
    shape = [1 if d < 0 else d for d in spec.shape]
    return np.zeros(shape, dtype=spec.dtype)


def cache_key(model: str, version: str) -> str:
    return f"{model}:{version}"


class DataPlane:
    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        self.metrics = metrics or Metrics("local")
        self.config = config
        self._loads = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mm-load")
        self._infers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mm-infer")
        self.catalog = self._open_catalog(config)
        self.cache: ModelCache[ServedModel] = ModelCache(
            config.cache.capacity_bytes, policy=config.cache.policy
        )
        self.metrics.watch_cache(self.cache.stats, self.cache.resident)
        self._last_good: dict[tuple[str, str | None], str] = {}
        self._failed: dict[str, tuple[float, ManyModelsError]] = {}
        self._pins: set[str] = set()
        self._background: set[asyncio.Task[Any]] = set()

    # ---- configuration -------------------------------------------------------------------

    @staticmethod
    def _open_catalog(config: ServerConfig) -> Catalog:
        s = config.store
        store = open_store(
            s.uri,
            cache_dir=s.disk_cache_dir,
            cache_bytes=s.disk_cache_bytes,
            storage_options=s.storage_options,
        )
        return Catalog(store, aliases={m: o.aliases for m, o in config.models.items()})

    async def start(self) -> None:
        """Apply pins and prefetch; called once the serving loop runs."""
        await self._apply_pins()
        self._spawn(self._prefetch_all(self.config.cache.prefetch))
        if self.config.store.refresh_interval_s:
            self._spawn(self._refresh_loop())

    async def reconfigure(self, config: ServerConfig) -> None:
        """Apply a new ``user_config`` in place: warm every moved alias's new version first."""
        old = self.config
        if config.store != old.store:
            self.catalog = self._open_catalog(config)
            for key, _ in self.cache.resident():  # same name, possibly other bytes: start clean
                self.cache.discard(key)
            self._last_good.clear()
        else:
            aliases = await self._warm_moved_aliases(old, config)
            self.catalog.set_aliases(aliases)
            # Remember what was applied, not what was asked: a refused move must be retried (and
            # warmed) by the next reconfigure, not slip in unwarmed.
            config = config.model_copy(
                update={
                    "models": {
                        m: o.model_copy(update={"aliases": aliases.get(m, {})})
                        for m, o in config.models.items()
                    }
                }
            )
        self.config = config
        await self._apply_pins()  # before the resize, so models unpinned here can be evicted
        self.cache.resize(config.cache.capacity_bytes)
        self._spawn(self._prefetch_all(config.cache.prefetch))

    async def _warm_moved_aliases(
        self, old: ServerConfig, new: ServerConfig
    ) -> dict[str, dict[str, str]]:
        """Load each moved alias's new target before the switch; keep the old target on failure."""
        applied = {m: dict(o.aliases) for m, o in new.models.items()}
        for model, options in new.models.items():
            before = old.models.get(model, ModelOptions()).aliases
            for alias, version in options.aliases.items():
                previous = before.get(alias) or self._safe_resolve(model, alias)
                if previous == version:
                    continue
                try:
                    await self._get(model, version, options)
                except ManyModelsError as exc:
                    self.metrics.rollout_failures.labels(self.metrics.replica, model).inc()
                    log.error("alias %s/%s stays on %s: %s", model, alias, previous, exc)
                    if previous is None:
                        applied[model].pop(alias)
                    else:
                        applied[model][alias] = previous
        return applied

    def _safe_resolve(self, model: str, ref: str | None) -> str | None:
        try:
            return self.catalog.resolve(model, ref)
        except ManyModelsError:
            return None

    async def _apply_pins(self) -> None:
        wanted = set()
        for name in self.config.cache.pin:
            model, _, ref = name.partition(":")
            version = self._safe_resolve(model, ref or None)
            if version is None:
                log.warning("pin %s: no such model or version", name)
            else:
                wanted.add(cache_key(model, version))
        for key in self._pins - wanted:
            self.cache.unpin(key)
        for key in wanted:
            self.cache.pin(key)
        self._pins = wanted

    async def _prefetch_all(self, names: list[str]) -> None:
        for name in names:
            model, _, ref = name.partition(":")
            try:
                version = self.catalog.resolve(model, ref or None)
                await self.cache.prefetch(
                    cache_key(model, version), lambda m=model, v=version: self._load(m, v)
                )
            except ManyModelsError as exc:
                log.warning("prefetch %s failed: %s", name, exc)

    async def _refresh_loop(self) -> None:
        """Pick up versions published to the store; warm a new latest before it takes traffic."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.store.refresh_interval_s)
            try:
                fresh = await loop.run_in_executor(self._loads, self._open_catalog, self.config)
                for (model, ref), current in list(self._last_good.items()):
                    try:
                        version = await loop.run_in_executor(self._loads, fresh.resolve, model, ref)
                        if version != current:
                            await self._get(model, version)
                    except ManyModelsError as exc:  # resolve_and_get falls back to `current`
                        log.warning("store refresh: %s %s: %s", model, ref or "latest", exc)
                self.catalog = fresh
            except ManyModelsError as exc:
                log.warning("store refresh: %s", exc)
            except Exception:  # keep refreshing whatever one round hit
                log.exception("store refresh failed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- loading ---------------------------------------------------------------------------

    def _load_blocking(self, model: str, version: str, options: ModelOptions) -> ServedModel:
        started = time.perf_counter()
        store = self.catalog.store
        manifest = store.manifest(model, version)
        path = store.fetch(model, version)
        factory = None
        if options.module:
            try:
                module_class = import_object(options.module, "torch module")
            except ValueError as exc:
                raise ModelLoadError(f"model {model}: {exc}") from exc
            factory = functools.partial(module_class, **options.module_options)
        loaded = load_model(manifest, path, self.config.runtime, module_factory=factory)
        try:
            processor = None
            if options.processor:
                processor = load_processor_class(options.processor)(
                    manifest, options.processor_options
                )
            served = ServedModel(manifest, loaded, processor, options)
            # Warm up (first-run allocations) and measure, so the first request is fast and the
            # inline-vs-thread decision has a number to go on.
            t0 = time.perf_counter()
            loaded.infer({s.name: _example(s) for s in manifest.inputs})
            served.latency_ms = (time.perf_counter() - t0) * 1000
        except Exception as exc:
            loaded.close()
            if isinstance(exc, ManyModelsError):
                raise
            raise ModelLoadError(f"model {model} version {version}: warm-up failed: {exc}") from exc
        self.metrics.loads.labels(self.metrics.replica, model).observe(
            time.perf_counter() - started
        )
        return served

    async def _load(
        self, model: str, version: str, options: ModelOptions | None = None
    ) -> tuple[ServedModel, int]:
        opts = options or self.config.models.get(model) or ModelOptions()
        loop = asyncio.get_running_loop()
        served = await loop.run_in_executor(self._loads, self._load_blocking, model, version, opts)
        return served, served.model.memory_bytes()

    async def _get(
        self, model: str, version: str, options: ModelOptions | None = None
    ) -> ServedModel:
        key = cache_key(model, version)
        failed = self._failed.get(key)
        if failed and failed[0] > time.monotonic():
            raise failed[1]
        try:
            return await self.cache.get_or_load(key, lambda: self._load(model, version, options))
        except (ArtifactIntegrityError, ModelLoadError) as exc:
            self._failed[key] = (time.monotonic() + FAILED_LOAD_BACKOFF_S, exc)
            raise

    async def resolve_and_get(self, model: str, ref: str | None) -> ServedModel:
        """The version ``ref`` names; if it cannot load, the version that last answered for it."""
        version = self.catalog.resolve(model, ref)
        try:
            served = await self._get(model, version)
        except (ArtifactIntegrityError, ModelLoadError) as exc:
            fallback = self._last_good.get((model, ref))
            if fallback is None or fallback == version:
                raise
            log.error("%s %s unusable (%s); %s keeps serving", model, version, exc, fallback)
            served = await self._get(model, fallback)
            version = fallback
        self._last_good[(model, ref)] = version
        return served

    # ---- inference -----------------------------------------------------------------------

    async def run(
        self, served: ServedModel, inputs: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """Tiny models run inline (a thread hop would cost more than the model); others in a pool."""
        try:
            if served.latency_ms <= self.config.inline_infer_max_ms:
                return served.timed_infer(inputs)
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._infers, served.timed_infer, inputs)
        except ManyModelsError:
            raise
        except Exception as exc:
            raise InvalidRequest(f"model {served.manifest.name} rejected the input: {exc}") from exc

    def model_name(self, model: str | None) -> str:
        if model:
            return model
        if self.config.default_model:
            return self.config.default_model
        raise InvalidRequest("no 'model' given and no default_model is configured")

    async def predict(
        self, model: str | None, ref: str | None, input_data: Any
    ) -> tuple[str, str, Any]:
        name = self.model_name(model)
        served = await self.resolve_and_get(name, ref)
        limits = self.config.limits
        if served.processor is not None:
            try:
                inputs = served.processor.preprocess(input_data)
            except ManyModelsError:
                raise
            except Exception as exc:
                raise InvalidRequest(f"pre-processing failed: {exc}") from exc
            outputs = await self.run(served, inputs)
            result = served.processor.postprocess(outputs)
        else:
            inputs, single = decode_input_data(
                input_data,
                served.manifest.inputs,
                allow_nonfinite=served.options.allow_nonfinite,
                max_batch=limits.max_batch,
            )
            result = encode_outputs(await self.run(served, inputs), single)
        return name, served.manifest.version, result

    # ---- metadata and repository ---------------------------------------------------------

    def manifest(self, model: str, ref: str | None) -> ModelManifest:
        return self.catalog.store.manifest(model, self.catalog.resolve(model, ref))

    def is_ready(self, model: str, ref: str | None) -> bool:
        """Servable: resolves, and is not a version that just failed to load."""
        try:
            version = self.catalog.resolve(model, ref)
        except ManyModelsError:
            return False
        failed = self._failed.get(cache_key(model, version))
        return not (failed and failed[0] > time.monotonic())

    def repository_index(self) -> list[dict[str, str]]:
        index = []
        for model in self.catalog.models():
            for version in self.catalog.versions(model):
                key = cache_key(model, version)
                state = "READY" if key in self.cache else "UNAVAILABLE"
                entry = {"name": model, "version": version, "state": state, "reason": ""}
                failed = self._failed.get(key)
                if failed and failed[0] > time.monotonic():
                    entry["reason"] = str(failed[1])
                elif state == "UNAVAILABLE":
                    entry["reason"] = "not resident; loads on first request"
                index.append(entry)
        return index

    async def load(self, model: str, ref: str | None = None) -> str:
        version = self.catalog.resolve(model, ref)
        key = cache_key(model, version)
        self._failed.pop(key, None)  # an explicit load retries at once
        await self.cache.prefetch(key, lambda: self._load(model, version))
        return version

    def unload(self, model: str) -> int:
        self.catalog.resolve(model, None)  # 404 for unknown models
        keys = [k for k, _ in self.cache.resident() if k.partition(":")[0] == model]
        return sum(self.cache.discard(k) for k in keys)

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "manymodels",
            "version": __version__,
            "extensions": ["model_repository", "binary_tensor_data"],
        }

    def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        self._loads.shutdown(wait=False, cancel_futures=True)
        self._infers.shutdown(wait=False, cancel_futures=True)
