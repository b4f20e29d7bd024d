"""Model -> version resolution: explicit versions, aliases (stable, canary, ...) and latest."""

from __future__ import annotations

from collections.abc import Mapping

from manymodels.errors import ModelNotFound, VersionNotFound
from manymodels.store.base import ModelStore
from manymodels.store.names import validate_name

STABLE = "stable"


class Catalog:
    """Aliases from the serve config (``user_config``, movable live) override the store's
    ``aliases.json``. An explicit version wins over an alias of the same name, so a pinned version
    can never be redirected by creating an alias."""

    def __init__(
        self, store: ModelStore, aliases: Mapping[str, Mapping[str, str]] | None = None
    ) -> None:
        self.store = store
        self._config: dict[str, dict[str, str]] = {}
        self.set_aliases(aliases or {})

    def set_aliases(self, aliases: Mapping[str, Mapping[str, str]]) -> None:
        """Replace all config aliases. Validated first, then swapped in one assignment, so a
        concurrent resolve sees either the old or the new table, never a mix."""
        table = {
            validate_name("model", model): {
                validate_name("alias", alias): validate_name("version", version)
                for alias, version in per_model.items()
            }
            for model, per_model in aliases.items()
        }
        self._config = table

    def over(self, store: ModelStore) -> Catalog:
        """This alias table over another view of the store (see ``ModelStore.fork``)."""
        other = Catalog(store)
        other._config = self._config
        return other

    def aliases(self, model: str) -> dict[str, str]:
        merged = self.store.store_aliases(model)
        merged.update(self._config.get(model, {}))
        return merged

    def models(self) -> list[str]:
        return self.store.list_models()

    def versions(self, model: str) -> list[str]:
        return self.store.list_versions(model)

    def resolve(self, model: str, ref: str | None = None) -> str:
        """Concrete version for ``ref``: None -> alias "stable" if defined, else the latest
        version; a version -> itself; an alias -> its target."""
        validate_name("model", model)
        if ref is not None:
            validate_name("version", ref)
        if not self.store.has_model(model):
            raise ModelNotFound(f"model {model!r} not found")
        versions = self.store.list_versions(model)
        if ref is not None and ref in versions:
            return ref
        aliases = self.aliases(model)
        if ref is None:
            if STABLE in aliases:
                return _target(model, STABLE, aliases[STABLE], versions)
            if not versions:
                raise VersionNotFound(f"model {model!r} has no published versions")
            return versions[-1]
        if ref in aliases:
            return _target(model, ref, aliases[ref], versions)
        raise VersionNotFound(
            f"model {model!r} has no version or alias {ref!r} "
            f"(versions: {_brief(versions)}; aliases: {_brief(sorted(aliases))})"
        )


def _target(model: str, alias: str, version: str, versions: list[str]) -> str:
    if version not in versions:
        raise VersionNotFound(
            f"alias {alias!r} of model {model!r} points at version {version!r}, "
            "which is not published"
        )
    return version


def _brief(names: list[str], limit: int = 8) -> str:
    if not names:
        return "none"
    shown = ", ".join(names[-limit:])
    return shown if len(names) <= limit else f"..., {shown} ({len(names)} in all)"
