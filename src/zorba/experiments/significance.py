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


def pooled_mcnemar(pairs: Sequence[tuple[Sequence[int], Sequence[int]]], labels: Sequence[int]) -> dict:
    """Method A against method B over several seeds on the same dev examples: each (a, b) is one seed's
    pair of prediction lists. The discordant examples of all seeds are pooled (a stratified McNemar:
    under "A and B are equally accurate" each discordant example is a fair coin whatever its seed),
    so three seeds test with three times the examples instead of three means."""
    a_only = b_only = 0
    for a, b in pairs:
        a_only += sum(int(x == y and z != y) for x, z, y in zip(a, b, labels, strict=True))
        b_only += sum(int(x != y and z == y) for x, z, y in zip(a, b, labels, strict=True))
    n = len(pairs) * len(labels)
    p = binomtest(a_only, a_only + b_only, 0.5).pvalue if a_only + b_only else 1.0
    return {"seeds": len(pairs), "a_right_b_wrong": a_only, "a_wrong_b_right": b_only,
            "a_minus_b_points": 100.0 * (a_only - b_only) / n if n else 0.0, "p_value": float(p)}
