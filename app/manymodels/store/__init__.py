"""Where artifacts live: local directories or object storage, manifests, aliases, a disk tier."""

from manymodels.store.base import ModelStore
from manymodels.store.catalog import Catalog
from manymodels.store.disk_tier import DiskTier
from manymodels.store.factory import open_store
from manymodels.store.local import LocalStore
from manymodels.store.manifest import ModelManifest, TensorSpec
from manymodels.store.names import sort_versions, validate_name
from manymodels.store.publish import publish_version, set_store_aliases
from manymodels.store.remote import RemoteStore

__all__ = [
    "Catalog",
    "DiskTier",
    "LocalStore",
    "ModelManifest",
    "ModelStore",
    "RemoteStore",
    "TensorSpec",
    "open_store",
    "publish_version",
    "set_store_aliases",
    "sort_versions",
    "validate_name",
]
