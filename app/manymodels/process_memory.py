"""What the process really holds, and handing freed model memory back to the OS.

Why trimming: glibc's malloc keeps freed memory in its heaps (one per thread that allocated, so
the loader's and the inference threads' heaps all grow) instead of returning it, so a replica that
keeps loading and closing models grows past the cache budget even though the cache holds the
budget. ``malloc_trim(0)`` walks every heap and returns its free pages. Measured with
bench/memory.py (10,000 small ONNX models, 64 MiB budget, >= 5,000 loads; docs/benchmarks.md,
"Memory under churn"): trimming, a pinned mmap threshold and ONNX Runtime without per-session arenas
take the RSS growth from 2.0x to 1.3-1.4x of the budget (1.2x less the per-model metadata). jemalloc
preloaded (Debian's libjemalloc2) did worse in the same run (1.51x with the arenas off, 2.59x with
them on) and would have to be preloaded into every Ray process by the image, so glibc stays.

A trim costs milliseconds on a large heap and holds each heap's lock while it walks it, so it runs
on a thread of its own, at most once per interval however many models close: a burst of evictions
costs one trim, and the serving loop never waits for one.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes() -> int | None:
    """The process's resident set size (Linux: /proc/self/statm, one small read); None elsewhere."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def glibc_malloc_trim() -> Callable[[], None] | None:
    """``malloc_trim(0)`` of the C library, or None where there is none (musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        trim = libc.malloc_trim
    except (OSError, AttributeError, TypeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial threshold, kept from then on


def pin_mmap_threshold(nbytes: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Keep glibc's mmap threshold at ``nbytes``: every allocation at least that big gets its own
    mapping, unmapped (returned) the moment it is freed. glibc's default is a moving threshold: each
    freed mapped block raises it (up to 32 MiB), so after the first large weights, activations or
    /metrics page are freed, every later buffer below that size lands in the heaps, where only a trim
    gives it back and fragmentation keeps it. Measured (bench/memory.py, small models): RSS growth
    1.56x -> 1.36x of the budget. The cost is a fresh mapping for each buffer >= 128 KiB, e.g. the
    activations of a large model without the ORT arena: ~1% of its run time (a few page faults
    per 4 KiB against milliseconds of compute); smaller activations stay in the heaps. True if set."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, nbytes))


class HeapTrimmer:
    """Runs ``trim`` on a daemon thread after ``request``s, at most once per ``interval_s``."""

    def __init__(
        self,
        trim: Callable[[], None] | None,
        clock: Callable[[], float] = time.monotonic,
        interval_s: float = 0.0,
    ) -> None:
        self._trim = trim
        self._clock = clock
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._interval = interval_s  # 0 until a data plane asks (RuntimeSettings)
        self._last = float("-inf")
        self.trims = 0
        self.seconds = 0.0

    @property
    def available(self) -> bool:
        return self._trim is not None

    def request(self, interval_s: float | None = None) -> None:
        """Memory was freed: trim soon, but no sooner than ``interval_s`` after the last trim.
        ``interval_s`` is remembered (None: the last one given; none yet, or <= 0: no trim).
        Cheap and thread-safe: called from ``__del__`` and from other threads too."""
        with self._lock:
            if interval_s is not None:
                self._interval = interval_s
            if self._trim is None or self._interval <= 0:
                return
            if self._thread is None and sys.is_finalizing():
                # A model closed by a finalizer at interpreter exit: a thread started now never
                # runs, and Thread.start() would wait for it forever (the process would hang).
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="mm-heap-trim", daemon=True)
                self._thread.start()
        self._wake.set()

    def delay(self) -> float:
        """Seconds until a trim may run (0 if it may run now)."""
        return max(0.0, self._last + self._interval - self._clock())

    def trim_now(self) -> None:
        assert self._trim is not None
        started = time.perf_counter()
        try:
            self._trim()
        finally:
            self._last = self._clock()
            self.trims += 1
            self.seconds += time.perf_counter() - started

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.delay())  # requests arriving meanwhile are served by this one trim
            self._wake.clear()
            try:
                self.trim_now()
            except Exception:  # never let the thread die: the next request tries again
                log.exception("malloc_trim failed")


# malloc_trim works on the whole process: one trimmer for every data plane in it.
HEAP_TRIMMER = HeapTrimmer(glibc_malloc_trim())
