"""Count-min sketch: never underestimates, saturates, halves on schedule."""

from __future__ import annotations

import random

import pytest

from manymodels.cache import FrequencySketch


def test_estimates_never_fall_below_true_counts() -> None:
    rng = random.Random(3)
    sketch = FrequencySketch(width=1 << 12, sample_size=10**9, max_count=255)
    truth = {f"model-{i}": rng.randrange(0, 40) for i in range(2000)}
    for key, count in truth.items():
        for _ in range(count):
            sketch.increment(key)
    errors = [sketch.estimate(k) - c for k, c in truth.items()]
    assert min(errors) >= 0
    # conservative update keeps collisions rare at ~0.5 keys per counter
    assert sum(e == 0 for e in errors) / len(errors) > 0.9


def test_counters_saturate_at_max_count() -> None:
    sketch = FrequencySketch(width=64, sample_size=10**9, max_count=15)
    for _ in range(100):
        sketch.increment("hot")
    assert sketch.estimate("hot") == 15
    assert sketch.estimate("never") == 0


def test_halves_every_sample_size_requests_even_when_saturated() -> None:
    sketch = FrequencySketch(width=1 << 10, sample_size=40, max_count=15)
    for _ in range(30):
        sketch.increment("hot")  # saturates at 15 after 15 requests; the clock keeps running
    for _ in range(9):
        sketch.increment("warm")
    assert (sketch.estimate("hot"), sketch.estimate("warm"), sketch.resets) == (15, 9, 0)
    sketch.increment("warm")  # 40th request
    assert (sketch.estimate("hot"), sketch.estimate("warm"), sketch.resets) == (7, 5, 1)


@pytest.mark.parametrize(
    "kwargs", [{"width": 1000}, {"width": 0}, {"depth": 0}, {"sample_size": 0}, {"max_count": 256}]
)
def test_rejects_bad_parameters(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        FrequencySketch(**kwargs)
