from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import pytest

from manymodels.process_memory import HeapTrimmer, glibc_malloc_trim, pin_mmap_threshold, resident_bytes

WAIT_S = 30  # generous: a wait for something that must happen, not a timing assertion


class FakeTrim:
    """Counts trims; each one may be held until released."""

    def __init__(self, hold: bool = False) -> None:
        self.calls = 0
        self.done = threading.Semaphore(0)
        self.started = threading.Event()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self) -> None:
        self.calls += 1
        self.started.set()
        assert self.release.wait(WAIT_S)
        self.done.release()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_resident_bytes_is_the_kernels_figure() -> None:
    rss = resident_bytes()
    with open("/proc/self/status") as f:
        vm_rss = int(re.search(r"VmRSS:\s+(\d+) kB", f.read()).group(1)) * 1024
    assert rss is not None and rss > 0
    assert abs(rss - vm_rss) < 16 * 2**20  # two reads of the same counter, a moment apart


def test_glibc_trim_is_found_and_runs() -> None:
    trim = glibc_malloc_trim()
    assert trim is not None  # the image and CI run glibc
    trim()


def test_mmap_threshold_can_be_pinned() -> None:
    assert pin_mmap_threshold()  # glibc accepts the parameter (its initial value: nothing changes)


def test_a_request_trims_once_on_the_trimmer_thread() -> None:
    fake = FakeTrim()
    trimmer = HeapTrimmer(fake)
    trimmer.request(0.001)
    assert fake.done.acquire(timeout=WAIT_S)
    assert trimmer.trims == 1 and fake.calls == 1
    assert trimmer.seconds >= 0


def test_no_interval_or_zero_means_no_trim() -> None:
    fake = FakeTrim()
    trimmer = HeapTrimmer(fake)
    trimmer.request()  # nothing configured yet
    trimmer.request(0)
    trimmer.request()  # remembers 0
    assert trimmer._thread is None and fake.calls == 0
    trimmer.request(0.001)
    assert fake.done.acquire(timeout=WAIT_S)
    trimmer.request()  # remembers 0.001
    assert fake.done.acquire(timeout=WAIT_S)
    assert fake.calls == 2


def test_requests_during_a_trim_are_served_by_one_more_trim() -> None:
    fake = FakeTrim(hold=True)
    trimmer = HeapTrimmer(fake)
    trimmer.request(0.001)
    assert fake.started.wait(WAIT_S)
    for _ in range(50):  # a burst of closes while the first trim runs
        trimmer.request()
    fake.release.set()
    assert fake.done.acquire(timeout=WAIT_S)
    assert fake.done.acquire(timeout=WAIT_S)  # the one follow-up trim
    assert not trimmer._wake.is_set()  # nothing else pending: no third trim
    assert fake.calls == 2


def test_delay_waits_out_the_interval_since_the_last_trim() -> None:
    clock = FakeClock()
    trimmer = HeapTrimmer(lambda: None, clock=clock, interval_s=5.0)  # no request: no thread
    assert trimmer.delay() == 0.0  # never trimmed
    trimmer.trim_now()
    assert trimmer.delay() == pytest.approx(5.0)
    clock.now += 2.0
    assert trimmer.delay() == pytest.approx(3.0)
    clock.now += 10.0
    assert trimmer.delay() == 0.0


def test_without_malloc_trim_requests_do_nothing() -> None:
    trimmer = HeapTrimmer(None)
    trimmer.request(1.0)
    assert not trimmer.available and trimmer._thread is None and trimmer.trims == 0


def test_a_failing_trim_does_not_stop_the_thread() -> None:
    calls = threading.Semaphore(0)

    def broken() -> None:
        calls.release()
        raise OSError("boom")

    trimmer = HeapTrimmer(broken)
    trimmer.request(0.001)
    assert calls.acquire(timeout=WAIT_S)
    trimmer.request()
    assert calls.acquire(timeout=WAIT_S)
    assert trimmer._thread is not None and trimmer._thread.is_alive()


# A trimmer whose thread is not started yet, asked for a trim by an object finalised at exit (a model
# still in the cache when the replica's process ends): on Python 3.11 that Thread.start() never returns.
AT_EXIT = """
from manymodels.process_memory import HeapTrimmer

class Model:
    def __del__(self):
        TRIMMER.request(1.0)
        print("asked", flush=True)

TRIMMER = HeapTrimmer(lambda: None)
MODEL = Model()
"""


def test_a_request_at_interpreter_exit_does_not_hang_the_process() -> None:
    done = subprocess.run(
        [sys.executable, "-c", AT_EXIT], capture_output=True, text=True, timeout=WAIT_S, env=os.environ
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "asked\n"
