"""The canary/stable rule: every new version becomes ``canary``; ``stable`` moves only on merit.

Promotion needs a finite score that is at least ``min_score`` (when given) and at least the
stable version's score plus ``min_improvement`` (when there is a stable version). A stable version
whose own score is not finite (NaN or infinite on the held-out data) is beaten by any finite score.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(
    score: float,
    stable_score: float | None,
    *,
    min_score: float | None = None,
    min_improvement: float = 0.0,
) -> Decision:
    """Whether the new version (``score``) replaces the stable one (``stable_score``; None: no stable)."""
    if not math.isfinite(score):
        return Decision(False, f"score {score} is not a finite number")
    if min_score is not None and score < min_score:
        return Decision(False, f"score {score:.6g} is below --min-score {min_score:.6g}")
    if stable_score is None:
        floor = "" if min_score is None else f" and meets --min-score {min_score:.6g}"
        return Decision(True, f"no stable version yet; score {score:.6g}{floor}")
    if not math.isfinite(stable_score):
        return Decision(True, f"the stable version's score is {stable_score}; score {score:.6g} is finite")
    needed = stable_score + min_improvement
    if score < needed:
        return Decision(
            False,
            f"score {score:.6g} is below the stable score {stable_score:.6g} + --min-improvement "
            f"{min_improvement:.6g} = {needed:.6g}",
        )
    return Decision(
        True,
        f"score {score:.6g} >= the stable score {stable_score:.6g} + --min-improvement {min_improvement:.6g}",
    )
