"""Objects named by import path in the config (``"package.module:Name"``): code shipped in the image.

Processors and PyTorch module classes come this way, never from the model store.
"""

from __future__ import annotations

import importlib
import re
from typing import Any

_IMPORT_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def import_object(import_path: str, what: str) -> Any:
    """Import ``"package.module:Name"``; ``ValueError`` naming ``what`` and the path on failure."""
    if not isinstance(import_path, str) or not _IMPORT_PATH.match(import_path):
        raise ValueError(
            f"{what} import path {import_path!r} must look like 'package.module:ClassName'"
        )
    module_name, _, attr_path = import_path.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{what} {import_path!r}: cannot import {module_name!r}: {exc}") from exc
    for attr in attr_path.split("."):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ValueError(
                f"{what} {import_path!r}: {module_name!r} has no attribute {attr_path!r}"
            ) from None
    return obj
