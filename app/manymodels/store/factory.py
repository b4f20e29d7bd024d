"""``open_store``: pick the backend from a URI."""

from __future__ import annotations

import hashlib
import re
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from manymodels.store.base import ModelStore
from manymodels.store.local import LocalStore
from manymodels.store.remote import RemoteStore

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def open_store(
    uri: str,
    *,
    cache_dir: str | Path | None = None,
    cache_bytes: int = 10 * 2**30,
    storage_options: dict[str, Any] | None = None,
) -> ModelStore:
    """A plain path, or ``file://`` without ``cache_dir``, is read in place (LocalStore); anything
    else goes through fsspec with a disk tier (RemoteStore). Without ``cache_dir`` the disk tier is
    ``default_tier_dir(uri)``: one stable folder per store URI, so re-opening the store, restarting
    the process or a second replica on the node reuses what is already downloaded. Set it explicitly
    in production so the tier lands on a sized volume."""
    is_file = uri.startswith("file://")
    if is_file and urlparse(uri).netloc not in ("", "localhost"):
        # "file://models" would otherwise silently become the current directory
        raise ValueError(f"file URI {uri!r} needs an absolute path: file:///path/to/store")
    if not _SCHEME.match(uri) or (is_file and cache_dir is None):
        return LocalStore(unquote(urlparse(uri).path) if is_file else uri)
    if cache_dir is None:
        cache_dir = default_tier_dir(uri)
    return RemoteStore(
        uri, cache_dir=cache_dir, cache_bytes=cache_bytes, storage_options=storage_options
    )


def default_tier_dir(uri: str) -> Path:
    """``$TMPDIR/manymodels-disk/<hash of the URI>``: the tier is content-addressed and shareable
    between processes (see DiskTier), so one folder per store is safe and never leaks."""
    digest = hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "manymodels-disk" / digest
