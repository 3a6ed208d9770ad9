"""Is the final model better than zero-shot on the same dev examples? McNemar's exact test on the
paired predictions: only the examples the two models disagree on carry information."""

from __future__ import annotations

from collections.abc import Sequence

from scipy.stats import binomtest


def mcnemar(before: Sequence[int], after: Sequence[int], labels: Sequence[int]) -> dict | None:
    """b = examples right before and wrong after, c = wrong before and right after; under "no change"
    c ~ Binomial(b + c, 1/2). Two-sided exact p-value. None when the paired predictions are missing
    (a resumed run does not re-score the base model)."""
    if not before or len(before) != len(after) or len(after) != len(labels):
        return None
    b = sum(int(x == y and z != y) for x, z, y in zip(before, after, labels, strict=True))
    c = sum(int(x != y and z == y) for x, z, y in zip(before, after, labels, strict=True))
    p = binomtest(c, b + c, 0.5).pvalue if b + c else 1.0
    return {"test": "McNemar exact (two-sided), final vs zero-shot on dev", "examples": len(labels),
            "right_to_wrong": b, "wrong_to_right": c, "gain_points": 100.0 * (c - b) / len(labels),
            "p_value": float(p)}
