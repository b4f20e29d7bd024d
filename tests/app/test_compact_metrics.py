from __future__ import annotations

import random
import threading

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from manymodels.compact_metrics import CompactCounter, CompactHistogram

BUCKETS = (0.001, 0.01, 0.1, 1, 10)


def samples(page: bytes) -> dict[tuple, tuple[str, str, float]]:
    """(sample name, labels) -> (family type, help, value), without prometheus_client's ``_created``."""
    out = {}
    for family in text_string_to_metric_families(page.decode()):
        for s in family.samples:
            if not s.name.endswith("_created"):
                key = (s.name, tuple(sorted(s.labels.items())))
                out[key] = (family.type, family.documentation, s.value)
    return out


def render(*families: CompactCounter | CompactHistogram) -> bytes:
    page = bytearray()
    for family in families:
        family.render_into(page)
    return bytes(page)


def test_page_matches_prometheus_client() -> None:
    registry = CollectorRegistry()
    ref_counter = Counter("reqs", "requests", ["replica", "model", "code"], registry=registry)
    ref_hist = Histogram("lat_seconds", "latency", ["replica", "model"], buckets=BUCKETS, registry=registry)
    counter = CompactCounter("reqs", "requests", ["replica", "model", "code"])
    hist = CompactHistogram("lat_seconds", "latency", ["replica", "model"], buckets=BUCKETS)
    rnd = random.Random(3)
    models = ["m-1", "m.2", 'odd"name\\with\nnewline', ""]
    for _ in range(500):
        model, code = rnd.choice(models), rnd.choice(["200", "404", "503"])
        value = rnd.choice([0.0, 0.001, 0.0011, 0.01, 0.5, 1.0, 10.0, 11.0, rnd.expovariate(20)])
        for c in (ref_counter, counter):
            c.labels("r1", model, code).inc()
        for h in (ref_hist, hist):
            h.labels("r1", model).observe(value)
    counter.labels("r1", "m-1", "200").inc(2.5)
    ref_counter.labels("r1", "m-1", "200").inc(2.5)
    assert samples(render(counter, hist)) == samples(generate_latest(registry))


def test_bucket_bounds_are_inclusive_and_cumulative() -> None:
    hist = CompactHistogram("h", "doc", ["model"], buckets=[1, 0.1])  # any order, like prometheus_client
    for value in (0.1, 0.2, 1.0, 5.0):
        hist.labels("m").observe(value)
    cumulative, total = hist.snapshot("m")
    assert cumulative == [1, 3, 4]  # le=0.1, le=1.0, +Inf
    assert total == pytest.approx(6.3)
    assert hist.snapshot("unseen") == ([0, 0, 0], 0.0)
    page = samples(render(hist))
    assert page[("h_bucket", (("le", "0.1"), ("model", "m")))][2] == 1
    assert page[("h_count", (("model", "m"),))][2] == 4


def test_counter_value_and_help_type_lines() -> None:
    counter = CompactCounter("c", "a counter", ["model"])
    counter.labels("m").inc()
    counter.labels("m").inc(3)
    assert counter.value("m") == 4 and counter.value("other") == 0
    text = render(counter).decode()
    assert "# HELP c_total a counter\n# TYPE c_total counter\n" in text
    assert 'c_total{model="m"} 4.0\n' in text


def test_unlabelled_families_render_without_braces() -> None:
    counter = CompactCounter("c", "doc", [])
    hist = CompactHistogram("h", "doc", [], buckets=[1])
    counter.labels().inc()
    hist.labels().observe(0.5)
    text = render(counter, hist).decode()
    assert "c_total 1.0\n" in text and "h_count 1.0\n" in text and 'h_bucket{le="1.0"} 1.0\n' in text
    assert samples(render(counter, hist))[("h_sum", ())][2] == 0.5


def test_misuse_is_refused() -> None:
    counter = CompactCounter("c", "doc", ["a", "b"])
    with pytest.raises(ValueError, match="expected labels"):
        counter.labels("only-one")
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("x", "y").inc(-1)
    with pytest.raises(ValueError, match="finite bucket"):
        CompactHistogram("h", "doc", [], buckets=[float("inf")])


def test_concurrent_updates_are_all_counted() -> None:
    counter = CompactCounter("c", "doc", ["model"])
    hist = CompactHistogram("h", "doc", ["model"], buckets=BUCKETS)

    def work(i: int) -> None:
        for n in range(2000):
            counter.labels(f"m{n % 7}").inc()
            hist.labels(f"m{n % 7}").observe(0.005 * i)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(counter.value(f"m{k}") for k in range(7)) == 8000
    assert sum(hist.snapshot(f"m{k}")[0][-1] for k in range(7)) == 8000


def test_labelled_updates_are_the_same_as_through_a_child() -> None:
    counter = CompactCounter("reqs", "requests", ["model", "code"])
    hist = CompactHistogram("lat_seconds", "latency", ["model"], buckets=BUCKETS)
    counter.labels("m", "200").inc()
    counter.inc_labelled(("m", "200"))
    counter.inc_labelled(("m", "404"), 2.5)
    hist.labels("m").observe(0.005)
    hist.observe_labelled(("m",), 0.5)
    assert counter.value("m", "200") == 2 and counter.value("m", "404") == 2.5
    assert hist.snapshot("m") == ([0, 1, 1, 2, 2, 2], pytest.approx(0.505))
    with pytest.raises(ValueError, match="expected labels"):
        counter.inc_labelled(("m",))
    with pytest.raises(ValueError, match="only go up"):
        counter.inc_labelled(("m", "200"), -1)
