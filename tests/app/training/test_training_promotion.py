"""The canary/stable rule: who moves stable, and the reason the job logs."""

from __future__ import annotations

import math

from manymodels.training.promotion import decide


def test_first_version_is_promoted_when_it_meets_min_score() -> None:
    assert decide(0.7, None).promote
    assert decide(0.7, None, min_score=0.5).promote
    refused = decide(0.4, None, min_score=0.5)
    assert not refused.promote and "--min-score" in refused.reason


def test_a_better_or_equal_version_replaces_stable() -> None:
    assert decide(0.9, 0.8).promote
    assert decide(0.8, 0.8).promote  # ties promote: the default min_improvement is 0


def test_a_worse_version_stays_canary() -> None:
    refused = decide(0.7, 0.8)
    assert not refused.promote and "stable score 0.8" in refused.reason


def test_min_improvement_is_a_margin_over_stable() -> None:
    # binary fractions: 0.5 + 0.25 is exactly 0.75
    assert not decide(0.74, 0.5, min_improvement=0.25).promote
    assert decide(0.75, 0.5, min_improvement=0.25).promote


def test_min_score_applies_even_when_stable_is_worse() -> None:
    refused = decide(0.45, 0.2, min_score=0.5)
    assert not refused.promote and "--min-score" in refused.reason


def test_non_finite_scores() -> None:
    assert not decide(math.nan, None).promote
    assert not decide(math.inf, 0.5).promote
    assert not decide(-math.inf, None).promote
    # a stable version that scores NaN on the held-out data is replaced by any finite score
    assert decide(-3.0, math.nan).promote
