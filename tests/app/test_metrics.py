from __future__ import annotations

import threading

import pytest
from prometheus_client.parser import text_string_to_metric_families

from manymodels import metrics as metrics_module
from manymodels.metrics import PAGE_TRIM_BYTES, Metrics
from manymodels.process_memory import HeapTrimmer


def values(page: bytes) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(page.decode())
        for s in family.samples
    }


class CountingTrim:
    def __init__(self) -> None:
        self.calls = threading.Semaphore(0)

    def __call__(self) -> None:
        self.calls.release()


@pytest.fixture
def trimmer(monkeypatch: pytest.MonkeyPatch) -> tuple[HeapTrimmer, CountingTrim]:
    trim = CountingTrim()
    fake = HeapTrimmer(trim, interval_s=0.001)
    monkeypatch.setattr(metrics_module, "HEAP_TRIMMER", fake)
    return fake, trim


def test_process_rss_and_trims_are_exposed_per_replica(trimmer) -> None:
    fake, _ = trimmer
    metrics = Metrics("r7")
    page = values(metrics.render())
    assert page[("manymodels_process_resident_bytes", (("replica", "r7"),))] > 0
    assert page[("manymodels_process_heap_trims_total", (("replica", "r7"),))] == 0
    fake.trim_now()
    fake.trim_now()
    page = values(metrics.render())
    assert page[("manymodels_process_heap_trims_total", (("replica", "r7"),))] == 2
    assert page[("manymodels_process_heap_trim_seconds_total", (("replica", "r7"),))] >= 0


def test_per_model_series_keep_their_names(trimmer) -> None:
    metrics = Metrics("r1")
    metrics.observe("m", 200, 0.002)
    metrics.loads.labels("r1", "m").observe(0.3)
    page = values(metrics.render())
    labels = (("model", "m"), ("replica", "r1"))
    assert page[("manymodels_requests_total", (("code", "200"), *labels))] == 1
    assert page[("manymodels_request_seconds_bucket", (("le", "0.0025"), *labels))] == 1
    assert page[("manymodels_request_seconds_sum", labels)] == 0.002
    assert page[("manymodels_model_load_seconds_count", labels)] == 1


def test_a_big_page_asks_for_a_trim(trimmer) -> None:
    _, trim = trimmer
    metrics = Metrics("r1")
    metrics.render()
    assert not trim.calls.acquire(timeout=0.05)  # a small page: no trim asked for
    model = 0
    while len(metrics.render()) <= PAGE_TRIM_BYTES:
        for _ in range(500):
            metrics.observe(f"model-{model}", 200, 0.01)
            model += 1
    assert trim.calls.acquire(timeout=30)
