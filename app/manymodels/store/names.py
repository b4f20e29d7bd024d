"""Name validation and version ordering.

Model names, versions and aliases become path components in local directories and object-store
keys, so they are checked against one strict pattern before they touch a path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from manymodels.errors import InvalidName

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KINDS = frozenset({"model", "version", "alias"})
_CHUNKS = re.compile(r"(\d+)")


def is_valid_name(value: object) -> bool:
    # fullmatch, not match with "$": "$" also matches before a trailing newline.
    return isinstance(value, str) and ".." not in value and _NAME.fullmatch(value) is not None


def validate_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe model/version/alias name, else raise InvalidName."""
    if kind not in _KINDS:
        raise ValueError(f"unknown name kind {kind!r}")
    if not is_valid_name(value):
        shown = repr(value)
        if len(shown) > 80:  # the value may come straight from a request body
            shown = shown[:77] + "..."
        raise InvalidName(
            f"invalid {kind} name {shown}: use 1-128 characters from A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit, without '..'"
        )
    return value


def is_plain_filename(name: object) -> bool:
    """A file name that stays inside its directory: no separators, no dot-names, no NUL."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= 255
        and not name.startswith(".")
        and not any(c in name for c in "/\\\0")
    )


def version_key(version: str) -> tuple[tuple[tuple[int, int, str], ...], str]:
    """Natural sort key: digit runs compare as numbers ("2" < "10", "1.9" < "1.10").

    Each chunk is (kind, number, text) so numbers and text never compare with each other; the raw
    string breaks ties such as "1" vs "01" so the order is total and deterministic.
    """
    chunks = tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in _CHUNKS.split(version)
        if part
    )
    return chunks, version


def sort_versions(versions: Iterable[str]) -> list[str]:
    return sorted(versions, key=version_key)
