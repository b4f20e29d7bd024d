"""Streaming sha256 in 1 MiB chunks, so multi-GB artifacts never sit in memory."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def copy_and_hash(src: BinaryIO, dst: BinaryIO | None = None) -> tuple[str, int]:
    """Read ``src`` to the end (copying into ``dst`` if given); return (sha256 hex, byte count)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := src.read(CHUNK):
        digest.update(chunk)
        size += len(chunk)
        if dst is not None:
            dst.write(chunk)
    return digest.hexdigest(), size


def sha256_file(path: str | Path) -> tuple[str, int]:
    with open(path, "rb") as f:
        return copy_and_hash(f)


def mismatch_message(label: str, expected: str, actual: str) -> str:
    return f"{label}: artifact sha256 mismatch, expected {expected[:12]}..., got {actual[:12]}..."
