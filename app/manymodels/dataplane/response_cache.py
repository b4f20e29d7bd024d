"""A per-replica cache of model answers, for models that opt in (``models.<name>.response_cache``).

Keyed on the model, its *resolved* version and the exact input tensors (each input's name, dtype,
shape and bytes): a published version is immutable, so the same key always has the same answer, and
a new version (an alias move, a store refresh) is a new key that can never be served an old answer.
Bounded in bytes (``cache.response_cache_bytes``), least recently used first out; an answer larger
than ``MAX_ENTRY_FRACTION`` of the budget is not kept, so one big answer cannot flush the rest.

Only the digest of the key is stored (BLAKE2b, 256 bits), not the input bytes: a chance collision
among n entries has probability about n^2 / 2^257 (for 10^6 entries, ~10^-65), and finding one on
purpose is the preimage/collision problem of a cryptographic hash (the store trusts SHA-256 the same
way for artifacts). Keeping the inputs to compare would double the memory for inputs that are
often far bigger than the answers (an image in, ten logits out).

Stored arrays are private read-only copies, and every hit returns fresh copies: a processor's
``postprocess`` may modify what it gets, cached or not, without touching the cache. Used from the
serving event loop only (no locks).
"""

from __future__ import annotations

import hashlib
import struct
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from manymodels.config import ModelOptions, ServerConfig, StoreConfig

MAX_ENTRY_FRACTION = 1 / 8
# The OrderedDict's per-key cost (hash-table slot at its worst load, plus the linked-list node it keeps
# for ordering): ~125 bytes measured with tracemalloc (CPython 3.11), rounded up; the test checks it.
_SLOT_BYTES = 160
_LENGTH = struct.Struct("<Q")


def _field(h: hashlib.blake2b, data: bytes) -> None:
    # Length-prefixed, so no two different sequences of fields hash the same stream.
    h.update(_LENGTH.pack(len(data)))
    h.update(data)


def response_key(model: str, version: str, inputs: Mapping[str, np.ndarray]) -> bytes | None:
    """The digest of (model, version, every input's name, dtype, shape and bytes); None when an input
    holds Python objects that are neither bytes nor str (their bytes are not their value)."""
    h = hashlib.blake2b(digest_size=32)
    _field(h, model.encode())
    _field(h, version.encode())
    h.update(_LENGTH.pack(len(inputs)))
    for name in sorted(inputs):
        array = inputs[name]
        _field(h, name.encode())
        _field(h, array.dtype.str.encode())  # e.g. '<f4', '|S5': kind, width and byte order
        h.update(_LENGTH.pack(array.ndim))
        h.update(struct.pack(f"<{array.ndim}q", *array.shape))
        if array.dtype.kind == "O":
            for item in array.flat:
                if isinstance(item, bytes):
                    h.update(b"b")
                    _field(h, item)
                elif isinstance(item, str):
                    h.update(b"s")
                    _field(h, item.encode())
                else:
                    return None
        else:
            # hashlib reads the buffer in place (and releases the GIL for big ones); only a
            # non-contiguous view is copied first.
            data = np.ascontiguousarray(array)
            h.update(_LENGTH.pack(data.nbytes))
            h.update(data)
    return h.digest()


def _store(config: ServerConfig) -> StoreConfig:
    return config.store.model_copy(update={"refresh_interval_s": 0})  # polling alone is no new store


def _same_code(old: ModelOptions, new: ModelOptions) -> bool:
    return (old.module, old.module_options) == (new.module, new.module_options)


def caches(options: ModelOptions | None) -> bool:
    return options is not None and options.response_cache and options.deterministic


@dataclass
class ResponseCacheStats:
    """A snapshot; counters are cumulative. ``hits``/``misses`` per model, for models with the cache on;
    ``skipped``: answers not kept because they were bigger than ``MAX_ENTRY_FRACTION`` of the budget."""

    hits: dict[str, int]
    misses: dict[str, int]
    entries: int
    bytes: int
    capacity_bytes: int
    evictions: int
    skipped: int


class _Entry:
    __slots__ = ("model", "version", "outputs", "size")

    def __init__(self, model: str, version: str, outputs: dict[str, np.ndarray], size: int) -> None:
        self.model = model
        self.version = version
        self.outputs = outputs
        self.size = size


_ENTRY_BYTES = sys.getsizeof(_Entry("", "", {}, 0))


def _private_copy(array: np.ndarray) -> np.ndarray:
    copy = np.array(array, copy=True, order="C")
    copy.flags.writeable = False
    return copy


def _array_bytes(array: np.ndarray) -> int:
    size = sys.getsizeof(array)  # header + data: the copy owns its data
    if array.dtype.kind == "O":  # the array holds pointers; the objects are extra
        size += sum(sys.getsizeof(item) for item in array.flat)
    return size


class ResponseCache:
    def __init__(self, capacity_bytes: int) -> None:
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._capacity = capacity_bytes
        self._bytes = 0
        self._hits: dict[str, int] = {}
        self._misses: dict[str, int] = {}
        self._evictions = self._skipped = 0
        # Bumped by every drop: an answer computed across one (a store switch, the cache turned off
        # mid-request) is not stored.
        self.generation = 0

    @property
    def enabled(self) -> bool:
        return self._capacity > 0

    def get(self, model: str, key: bytes) -> dict[str, np.ndarray] | None:
        """Fresh, writable copies of the stored answer, or None (counted as a hit or a miss of ``model``)."""
        entry = self._entries.get(key)
        if entry is None:
            self._misses[model] = self._misses.get(model, 0) + 1
            return None
        self._entries.move_to_end(key)
        self._hits[model] = self._hits.get(model, 0) + 1
        return {name: array.copy() for name, array in entry.outputs.items()}

    def put(
        self, model: str, version: str, key: bytes, outputs: Mapping[str, np.ndarray], generation: int
    ) -> bool:
        """Keep a private copy of ``outputs`` under ``key``; False if not kept (too big, or the cache
        was dropped since ``generation`` was read)."""
        if generation != self.generation or not self.enabled or key in self._entries:
            return False
        # Bound the size before copying: an answer we would refuse is never duplicated.
        data = sum(np.asarray(a).nbytes for a in outputs.values())
        if data > self._capacity * MAX_ENTRY_FRACTION:
            self._skipped += 1
            return False
        stored = {name: _private_copy(np.asarray(array)) for name, array in outputs.items()}
        size = (
            _SLOT_BYTES
            + sys.getsizeof(key)
            + _ENTRY_BYTES
            + sys.getsizeof(stored)
            + sum(sys.getsizeof(name) + _array_bytes(array) for name, array in stored.items())
        )
        if size > self._capacity * MAX_ENTRY_FRACTION:
            self._skipped += 1
            return False
        self._entries[key] = _Entry(model, version, stored, size)
        self._bytes += size
        self._shrink()
        return True

    def resize(self, capacity_bytes: int) -> None:
        """A new budget: least recently used answers go until the rest fit (0 drops all and disables)."""
        self._capacity = capacity_bytes
        self._shrink()

    def drop(self, model: str | None = None) -> int:
        """Drop ``model``'s answers (every model's if None); returns how many."""
        self.generation += 1
        doomed = [k for k, e in self._entries.items() if model is None or e.model == model]
        for key in doomed:
            self._bytes -= self._entries.pop(key).size
        return len(doomed)

    def apply(self, before: ServerConfig, after: ServerConfig) -> None:
        """A new ``user_config``: drop what it makes stale or unwanted, then fit the new budget.

        Another store may hold other bytes under the same names, and other runtime settings (device,
        threads) may round differently: both drop everything. A model whose cache is turned off, or
        whose torch module or its arguments changed, loses its answers. Answers of versions that
        are no longer referenced are not hunted down: their keys can never match a newer version,
        and being unused they are the first the LRU order evicts.
        """
        if _store(before) != _store(after) or before.runtime != after.runtime:
            self.drop()
        else:
            for model, old in before.models.items():
                new = after.models.get(model)
                if caches(old) and not (caches(new) and _same_code(old, new)):  # type: ignore[arg-type]
                    self.drop(model)
        self.resize(after.cache.response_cache_bytes)

    def stats(self) -> ResponseCacheStats:
        return ResponseCacheStats(
            hits=dict(self._hits),
            misses=dict(self._misses),
            entries=len(self._entries),
            bytes=self._bytes,
            capacity_bytes=self._capacity,
            evictions=self._evictions,
            skipped=self._skipped,
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def _shrink(self) -> None:
        while self._bytes > self._capacity and self._entries:
            _, entry = self._entries.popitem(last=False)
            self._bytes -= entry.size
            self._evictions += 1
