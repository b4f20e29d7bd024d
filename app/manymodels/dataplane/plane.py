"""The data plane's face: what the protocol layer calls with model names and tensors.

``/predict``, the OIP routes and any future gRPC front decode their requests themselves and call
these methods; nothing here knows about HTTP or Ray. The parts, one job each: ``live_catalog`` (store,
aliases, polling), ``rollout`` (applying a new config live), ``loader`` (memory cache, loads, closes),
``inference`` (running a model) and ``manymodels.tensors`` (the one input check). All coroutines
run on one event loop (the replica's serving loop).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import numpy as np

from manymodels import __version__
from manymodels.cache import ModelCache
from manymodels.config import ServerConfig
from manymodels.dataplane.inference import Inference
from manymodels.dataplane.live_catalog import LiveCatalog
from manymodels.dataplane.loader import ModelLoader, cache_key
from manymodels.dataplane.response_cache import ResponseCache, caches, response_key
from manymodels.dataplane.rollout import Rollout, check_code
from manymodels.dataplane.served import ServedModel
from manymodels.errors import ArtifactIntegrityError, InvalidRequest, ManyModelsError, ModelLoadError
from manymodels.metrics import Metrics
from manymodels.store import Catalog
from manymodels.store.manifest import ModelManifest
from manymodels.tensors import check_inputs

log = logging.getLogger("manymodels")


class DataPlane:
    def __init__(self, config: ServerConfig, metrics: Metrics | None = None) -> None:
        check_code(config)
        self.metrics = metrics or Metrics("local")
        self.live = LiveCatalog(config)
        self.loader = ModelLoader(self.live, config, self.metrics)
        self.rollout = Rollout(config, self.live, self.loader, self.metrics)
        self.inference = Inference(metrics=self.metrics)
        self.responses = ResponseCache(config.cache.response_cache_bytes)
        self.metrics.watch_cache(self.cache.stats, self.cache.resident)
        self.metrics.watch_responses(self.responses.stats)
        self._background: set[asyncio.Task[Any]] = set()
        self._poll: asyncio.Task[None] | None = None

    @property
    def cache(self) -> ModelCache[ServedModel]:
        return self.loader.cache

    @property
    def catalog(self) -> Catalog:
        return self.live.catalog

    async def start(self) -> None:
        """Apply pins and prefetch; called once the serving loop runs."""
        self.rollout.apply_pins()
        self._spawn(self.rollout.prefetch(self.config.cache.prefetch))
        # Not in _background (which settles): it polls for the life of the replica.
        self._poll = asyncio.get_running_loop().create_task(
            self.live.poll(lambda: self.config.store.refresh_interval_s, self.rollout.warm_moved)
        )

    async def reconfigure(self, config: ServerConfig) -> None:
        """Apply a new ``user_config`` in place (see ``Rollout.apply``)."""
        before = self.config
        await self.rollout.apply(config)
        # No await since apply's store switch: no request saw the new store with the old answers.
        self.responses.apply(before, self.config)
        self._spawn(self.rollout.prefetch(config.cache.prefetch))

    @property
    def config(self) -> ServerConfig:
        return self.rollout.config

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ---- requests ------------------------------------------------------------------------

    def model_name(self, model: str | None) -> str:
        if model:
            return model
        if self.config.default_model:
            return self.config.default_model
        raise InvalidRequest("no 'model' given and no default_model is configured")

    async def acquire(self, model: str, ref: str | None) -> ServedModel:
        """The version ``ref`` names (or, if it cannot load, the one that last answered for it),
        held for the caller until ``release()``."""
        if self.live.store.memoised(model, ref):
            version = self.live.resolve(model, ref)
        else:  # the first look at this model lists the store: never on the serving loop
            loop = asyncio.get_running_loop()
            version = await loop.run_in_executor(None, self.live.resolve, model, ref)
        try:
            served = await self.loader.get(model, version)
        except (ArtifactIntegrityError, ModelLoadError) as exc:
            fallback = self.live.last_answer(model, ref)
            if fallback is None or fallback == version:
                raise
            log.error("%s %s unusable (%s); %s keeps serving", model, version, exc, fallback)
            served = await self.loader.get(model, fallback)
            version = fallback
        self.live.answered(model, ref, version)
        return served

    async def infer(self, served: ServedModel, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``inputs`` against the manifest (once, for every protocol), then answer from the
        response cache if the model opted in and the same inputs were seen, else run the model."""
        config = self.config
        check_inputs(
            served.manifest.inputs,
            inputs,
            allow_nonfinite=served.options.allow_nonfinite,
            max_batch=config.limits.max_batch,
        )
        responses = self.responses
        # The live config decides, not the options the model was loaded with: "off" applies at once.
        if not (responses.enabled and caches(config.models.get(served.manifest.name))):
            return await self.inference.run(served, inputs, inline_max_ms=config.inline_infer_max_ms)
        key = response_key(served.manifest.name, served.manifest.version, inputs)
        if (cached := responses.get(served.manifest.name, key)) is not None:
            return cached
        generation = responses.generation
        outputs = await self.inference.run(served, inputs, inline_max_ms=config.inline_infer_max_ms)
        # A retired model (store switch, unload, eviction) may no longer be what its name serves.
        if not served.retired:
            responses.put(served.manifest.name, served.manifest.version, key, outputs, generation)
        return outputs

    # ---- metadata and repository ---------------------------------------------------------

    def manifest(self, model: str, ref: str | None) -> ModelManifest:
        return self.live.store.manifest(model, self.live.resolve(model, ref))

    def is_ready(self, model: str, ref: str | None) -> bool:
        """Servable: resolves, and is not a version that just failed to load."""
        version = self.live.try_resolve(model, ref)
        return version is not None and self.loader.failure(model, version) is None

    def unready_reason(self) -> str | None:
        """Why this replica cannot serve yet, None once it can: the catalog must list a model and the
        default model (if any) must resolve to a version that has not failed to load. Reads the store
        (memoised between refreshes): call it off the serving loop."""
        store = self.live.store
        try:
            if not self.catalog.models():
                return f"the catalog at {store.uri} holds no models"
            default = self.config.default_model
            if default and not self.is_ready(default, None):
                return (
                    f"the default model {default!r} is not servable (not in the catalog, or failed to load)"
                )
        except (OSError, ManyModelsError) as exc:
            return f"the catalog at {store.uri} cannot be read: {exc}"
        return None

    def repository_index(self) -> list[dict[str, str]]:
        index = []
        for model in self.catalog.models():
            for version in self.catalog.versions(model):
                state = "READY" if cache_key(model, version) in self.cache else "UNAVAILABLE"
                entry = {"name": model, "version": version, "state": state, "reason": ""}
                failed = self.loader.failure(model, version)
                if failed is not None:
                    entry["reason"] = str(failed)
                elif state == "UNAVAILABLE":
                    entry["reason"] = "not resident; loads on first request"
                index.append(entry)
        return index

    async def load(self, model: str, ref: str | None = None) -> str:
        version = self.live.resolve(model, ref)
        await self.loader.prefetch(model, version, retry=True)  # an explicit load retries at once
        return version

    def unload(self, model: str) -> int:
        self.live.resolve(model, None)  # 404 for unknown models
        self.responses.drop(model)  # an explicit unload asks for the model's memory back
        return self.loader.unload(model)

    def server_metadata(self) -> dict[str, Any]:
        return {
            "name": "manymodels",
            "version": __version__,
            "extensions": ["model_repository", "binary_tensor_data"],
        }

    def close(self) -> None:
        for task in [*self._background, *([self._poll] if self._poll else [])]:
            task.cancel()
        self.loader.close()
        self.inference.close()
