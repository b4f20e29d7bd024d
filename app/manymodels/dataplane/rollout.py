"""Applying a new ``user_config`` live: alias moves warmed before they switch, pins, the budget,
prefetch; and warming what a store refresh moved. Serialised with refresh rounds (``LiveCatalog.lock``).
"""

from __future__ import annotations

import logging

from manymodels.config import ModelOptions, ServerConfig
from manymodels.dataplane.batching import batching_changes
from manymodels.dataplane.live_catalog import LiveCatalog, config_aliases
from manymodels.dataplane.loader import ModelLoader, cache_key, code_for
from manymodels.errors import ManyModelsError
from manymodels.metrics import Metrics

log = logging.getLogger("manymodels")


def check_code(config: ServerConfig) -> None:
    """Import every processor and torch module the config names: a typo fails when it is applied."""
    for options in config.models.values():
        code_for(options)


class Rollout:
    def __init__(
        self, config: ServerConfig, live: LiveCatalog, loader: ModelLoader, metrics: Metrics
    ) -> None:
        self.config = config
        self.live = live
        self.loader = loader
        self.metrics = metrics
        self._pins: set[str] = set()

    async def apply(self, config: ServerConfig) -> None:
        """Apply a new ``user_config`` in place: warm every moved alias's new version first.

        Raises ConfigurationError (nothing applied) if the config names code that does not import, or
        batching for a resident version without a batch dimension.
        """
        check_code(config)
        same_store = config.store == self.config.store  # else nothing resident stays
        rebatched = batching_changes(config, self.loader.resident_models() if same_store else [])
        async with self.live.lock:  # never interleaved with a refresh round
            if self.live.switch_store(config.store):
                self.live.set_aliases(config_aliases(config))
                self.loader.unload()  # same names, possibly other bytes: start clean
            else:
                applied = await self._warm_moved_aliases(config)
                self.live.set_aliases(applied)
                # Remember what was applied, not what was asked: a refused move must be retried (and
                # warmed) by the next reconfigure, not slip in unwarmed.
                models = {
                    m: o.model_copy(update={"aliases": applied.get(m, {})}) for m, o in config.models.items()
                }
                config = config.model_copy(update={"models": models})
            self.config = self.loader.config = config
            for served, batching in rebatched:  # live: the next request of each version sees it
                served.options = served.options.model_copy(update={"batching": batching})
            self.apply_pins()  # before the resize, so models unpinned here can be evicted
            self.loader.cache.resize(config.cache.capacity_bytes)
            self.loader.budget_changed()

    async def _warm_moved_aliases(self, new: ServerConfig) -> dict[str, dict[str, str]]:
        """Load each moved alias's new target before the switch; keep the old target on failure."""
        applied = config_aliases(new)
        for model, options in new.models.items():
            before = self.config.models.get(model, ModelOptions()).aliases
            for alias, version in options.aliases.items():
                previous = before.get(alias) or self.live.try_resolve(model, alias)
                if previous == version:
                    continue
                try:
                    (await self.loader.get(model, version, options)).release()
                except ManyModelsError as exc:
                    self.metrics.rollout_failures.labels(self.metrics.replica, model).inc()
                    log.error("alias %s/%s stays on %s: %s", model, alias, previous, exc)
                    if previous is None:
                        applied[model].pop(alias)
                    else:
                        applied[model][alias] = previous
        return applied

    async def warm_moved(self, model: str, version: str, current: str) -> None:
        """A refresh moved a reference: load its new target first if the old one is in use."""
        if cache_key(model, current) in self.loader.cache:
            (await self.loader.get(model, version)).release()

    def apply_pins(self) -> None:
        wanted = set()
        for name in self.config.cache.pin:
            model, _, ref = name.partition(":")
            version = self.live.try_resolve(model, ref or None)
            if version is None:
                log.warning("pin %s: no such model or version", name)
            else:
                wanted.add(cache_key(model, version))
        for key in self._pins - wanted:
            self.loader.cache.unpin(key)
        for key in wanted:
            self.loader.cache.pin(key)
        self._pins = wanted

    async def prefetch(self, names: list[str]) -> None:
        for name in names:
            model, _, ref = name.partition(":")
            try:
                await self.loader.prefetch(model, self.live.resolve(model, ref or None))
            except ManyModelsError as exc:
                log.warning("prefetch %s failed: %s", name, exc)
