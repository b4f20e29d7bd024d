"""``open_store``: pick the backend from a URI."""

from __future__ import annotations

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
    a fresh folder under ``$TMPDIR/manymodels-disk``; set it explicitly in production so the tier
    lands on a sized volume and survives process restarts."""
    is_file = uri.startswith("file://")
    if is_file and urlparse(uri).netloc not in ("", "localhost"):
        # "file://models" would otherwise silently become the current directory
        raise ValueError(f"file URI {uri!r} needs an absolute path: file:///path/to/store")
    if not _SCHEME.match(uri) or (is_file and cache_dir is None):
        return LocalStore(unquote(urlparse(uri).path) if is_file else uri)
    if cache_dir is None:
        parent = Path(tempfile.gettempdir()) / "manymodels-disk"
        parent.mkdir(parents=True, exist_ok=True)
        cache_dir = tempfile.mkdtemp(prefix="tier-", dir=parent)
    return RemoteStore(
        uri, cache_dir=cache_dir, cache_bytes=cache_bytes, storage_options=storage_options
    )
