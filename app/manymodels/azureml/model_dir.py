"""The catalog Azure ML mounted: ``AZUREML_MODEL_DIR`` as the store root when ``MM_MODEL_ROOT`` is unset.

Azure ML mounts a deployment's registered model read-only at ``AZUREML_MODEL_DIR``
(``/var/azureml-app/azureml-models/<name>/<version>``). A model registered from a folder appears there
as that folder (``.../<name>/<version>/<folder>/``), so the catalog (``<model>/<version>/manifest.json``)
is either the directory itself or its one subfolder that holds one. Precedence: ``MM_MODEL_ROOT`` when
set, else the catalog found here, else the serve config's default (``/models`` in the image).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from pathlib import Path

from manymodels.errors import ConfigurationError
from manymodels.store.local import LocalStore

AZUREML_MODEL_DIR = "AZUREML_MODEL_DIR"
MODEL_ROOT = "MM_MODEL_ROOT"


def is_catalog(path: Path) -> bool:
    """At least one model with a published version, read by the store's own rules."""
    try:
        store = LocalStore(path)
    except FileNotFoundError:
        return False
    return any(store.list_versions(model) for model in store.list_models())


def find_catalog(model_dir: Path) -> Path:
    """The catalog inside an Azure ML model mount; a clear error naming what is there otherwise."""
    if is_catalog(model_dir):
        return model_dir
    if not model_dir.is_dir():
        raise ConfigurationError(f"{AZUREML_MODEL_DIR}={model_dir} is not a directory")
    entries = sorted(model_dir.iterdir())
    found = [p for p in entries if p.is_dir() and is_catalog(p)]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(p.name for p in found)
        raise ConfigurationError(
            f"{AZUREML_MODEL_DIR}={model_dir} holds {len(found)} catalogs ({names}): set {MODEL_ROOT} to"
            " the one to serve"
        )
    listing = ", ".join(p.name + ("/" if p.is_dir() else "") for p in entries[:20]) or "nothing"
    raise ConfigurationError(
        f"{AZUREML_MODEL_DIR}={model_dir} holds no model catalog (<model>/<version>/manifest.json), neither"
        f" at its top nor in one subfolder; it holds: {listing}. Register the catalog folder as the"
        " deployment's model (docs/azureml.md)"
    )


def apply(environ: MutableMapping[str, str]) -> str | None:
    """Point ``MM_MODEL_ROOT`` at the mounted catalog when only ``AZUREML_MODEL_DIR`` is set (before the
    serve config's ``${MM_MODEL_ROOT:-...}`` is expanded); returns the root chosen, None if nothing to do."""
    if environ.get(MODEL_ROOT) or not environ.get(AZUREML_MODEL_DIR):
        return None
    root = str(find_catalog(Path(environ[AZUREML_MODEL_DIR])))
    environ[MODEL_ROOT] = root
    return root
