"""Reading one sample's value out of a Prometheus text page, for tests that check counters move."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def metric(page: str, name: str, **labels: str) -> float:
    """The value of the first sample called ``name`` carrying ``labels`` (others may differ), else 0."""
    for family in text_string_to_metric_families(page):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0
