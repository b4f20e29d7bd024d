"""The live catalog: the store a replica reads, the alias table, and polling the store for changes.

Each store config is opened once per replica and kept (its connection and disk tier live as long as
the process); a refresh lists the store again beside the live view (``ModelStore.fork``), warms what
moved, then swaps the view in. Refresh rounds and reconfigures take ``lock``, so neither overwrites
the other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

from manymodels.config import ServerConfig, StoreConfig
from manymodels.errors import ManyModelsError
from manymodels.store import Catalog, ModelStore, open_store

log = logging.getLogger("manymodels")

Ref = tuple[str, str | None]  # (model, version or alias; None = the default)
Warm = Callable[[str, str, str], Awaitable[None]]  # (model, new version, version it replaces)


def config_aliases(config: ServerConfig) -> dict[str, dict[str, str]]:
    return {m: dict(o.aliases) for m, o in config.models.items()}


def _store_key(config: StoreConfig) -> str:
    return config.model_dump_json(exclude={"refresh_interval_s"})


class LiveCatalog:
    def __init__(self, config: ServerConfig) -> None:
        self._stores: dict[str, ModelStore] = {}
        self.store_config = config.store
        self.catalog = Catalog(self._store(config.store), config_aliases(config))
        self.lock = asyncio.Lock()
        self._answered: dict[Ref, str] = {}
        self.refreshes = 0

    def _store(self, config: StoreConfig) -> ModelStore:
        key = _store_key(config)
        store = self._stores.get(key)
        if store is None:
            store = self._stores[key] = open_store(
                config.uri,
                cache_dir=config.disk_cache_dir,
                cache_bytes=config.disk_cache_bytes,
                storage_options=config.storage_options,
            )
        return store

    @property
    def store(self) -> ModelStore:
        return self.catalog.store

    # -- resolution -----------------------------------------------------------------------------

    def resolve(self, model: str, ref: str | None) -> str:
        return self.catalog.resolve(model, ref)

    def try_resolve(self, model: str, ref: str | None) -> str | None:
        try:
            return self.catalog.resolve(model, ref)
        except ManyModelsError:
            return None

    def answered(self, model: str, ref: str | None, version: str) -> None:
        """Record what ``ref`` was served with: the fallback if its next target cannot load."""
        self._answered[(model, ref)] = version

    def last_answer(self, model: str, ref: str | None) -> str | None:
        return self._answered.get((model, ref))

    # -- changes (callers hold ``lock``) --------------------------------------------------------

    def set_aliases(self, aliases: Mapping[str, Mapping[str, str]]) -> None:
        self.catalog.set_aliases(aliases)

    def switch_store(self, config: StoreConfig) -> bool:
        """Point at another store config (a kept one if seen before); True if it changed. A change of
        ``refresh_interval_s`` alone is no store change (``poll`` reads it each round)."""
        if _store_key(config) == _store_key(self.store_config):
            self.store_config = config
            return False
        store = self._store(config)
        if store is not self.catalog.store:
            self.catalog = self.catalog.over(store.fork())
            self._answered.clear()  # versions of another store say nothing about this one
        self.store_config = config
        return True

    async def refresh(self, warm: Warm) -> None:
        """One round: list the store again, warm every reference whose target moved, swap in."""
        loop = asyncio.get_running_loop()
        # Listing is blocking I/O: the whole fresh view is built in one thread hop, not one per model.
        fresh, moved = await loop.run_in_executor(None, self._relist, list(self._answered.items()))
        for model, version, current in moved:
            try:
                await warm(model, version, current)
            except ManyModelsError as exc:  # the request path falls back to `current`
                log.warning("store refresh: %s %s: %s", model, version, exc)
        self.catalog = fresh
        self.refreshes += 1

    def _relist(self, answered: list[tuple[Ref, str]]) -> tuple[Catalog, list[tuple[str, str, str]]]:
        """A fresh view of the store and every (model, new target, current) among ``answered``
        (a snapshot taken on the loop, which keeps recording answers meanwhile)."""
        fresh = self.catalog.over(self.catalog.store.fork())
        moved = []
        for (model, ref), current in answered:
            try:
                version = fresh.resolve(model, ref)
            except ManyModelsError as exc:  # the request path falls back to `current`
                log.warning("store refresh: %s %s: %s", model, ref or "latest", exc)
                continue
            if version != current:
                moved.append((model, version, current))
        return fresh, moved

    async def poll(self, interval_s: Callable[[], float], warm: Warm) -> None:
        """Refresh every ``interval_s()`` seconds (read each round: reconfigure may change it)."""
        while True:
            await asyncio.sleep(interval_s() or 1.0)
            if not interval_s():
                continue  # polling turned off live; keep the task for when it comes back
            try:
                async with self.lock:
                    await self.refresh(warm)
            except ManyModelsError as exc:
                log.warning("store refresh: %s", exc)
            except Exception:  # keep refreshing whatever one round hit
                log.exception("store refresh failed")
