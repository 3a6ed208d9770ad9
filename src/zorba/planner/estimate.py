"""Run-time estimates of the bound's constants from the scalars clients report (docs/theory.md,
"Estimating the constants").

A reported scalar g = (F(w + mu u; xi) - F(w - mu u; xi)) / (2 mu) with u supported on S_n satisfies
E[g^2] = E|grad_{S_n} F_n(w; xi)|^2 + O(mu), for Gaussian and Rademacher u alike, so the mean of g^2
over a report estimates D_n = sum_{l in S_n} G_l^2. Reports with different block sets identify the
per-block G_l^2 (non-negative least squares); the spread of per-client gradient norms bounds the
heterogeneity zeta_l^2 from below.

The effective sizes r_l (the dimension in the ZO noise, docs/theory.md section 3) come from the model
and a sample of public text instead: an embedding row that no input looks up does not enter the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

_TINY = 1e-300


@dataclass(frozen=True)
class ScalarReport:
    """The scalars one client reported in one round, with the blocks it had active."""

    client: int
    blocks: tuple[int, ...]
    scalars: np.ndarray


@dataclass(frozen=True)
class MassRows:
    """One row per report: who, which blocks (M, L), mean g^2, how many scalars behind it."""

    clients: np.ndarray
    active: np.ndarray
    mass: np.ndarray
    counts: np.ndarray


def mass_rows(reports: Sequence[ScalarReport], n_blocks: int) -> MassRows:
    """One row per usable report (non-empty, blocks known); non-finite scalars are dropped."""
    cleaned = [ScalarReport(r.client, tuple(r.blocks), _finite(r.scalars)) for r in reports]
    kept = [r for r in cleaned if len(r.scalars) > 0 and len(r.blocks) > 0]
    active = np.zeros((len(kept), n_blocks), bool)
    for i, r in enumerate(kept):
        active[i, list(r.blocks)] = True
    mass = np.array([np.mean(np.square(np.asarray(r.scalars, float))) for r in kept])
    counts = np.array([len(r.scalars) for r in kept], float)
    return MassRows(np.array([r.client for r in kept], int), active, mass, counts)


def _finite(scalars) -> np.ndarray:
    x = np.asarray(scalars, float)
    return x[np.isfinite(x)]


def fit_block_second_moments(rows: MassRows, prior: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """G_l^2 >= 0 minimising sum over block-set patterns of (D_pattern - sum_{l in S} G_l^2)^2 weighted
    by its inverse variance m / (2 D^2), plus ridge * sum_l (G_l^2 / g_l - 1)^2 towards the prior
    shape g (rescaled to the data), which keeps blocks no report separates at the prior's split."""
    if len(rows.mass) == 0:
        return prior
    patterns, mean_mass, counts = _group_by_pattern(rows)
    shape = _positive(prior)
    scale = float(np.sum(counts * mean_mass) / np.sum(counts * (patterns @ shape)))
    base = scale * shape
    row_weight = np.sqrt(counts / 2.0) / np.maximum(mean_mass, _TINY)
    design = np.vstack([patterns * base * row_weight[:, None], np.sqrt(ridge) * np.eye(len(base))])
    target = np.concatenate([mean_mass * row_weight, np.full(len(base), np.sqrt(ridge))])
    x, _ = nnls(design, target, maxiter=50 * design.shape[1])
    return base * x


def fit_heterogeneity(
    rows: MassRows, G2: np.ndarray, previous: np.ndarray, weights: np.ndarray | None = None
) -> np.ndarray:
    """zeta_l^2 >= weighted variance over clients of |grad_l f_n| (docs/theory.md, section 9). Each
    report's mass is split over its blocks in proportion to G2; the variance of the square roots is
    corrected for the sampling noise of a mean of m squares (about G^2 / (2m)), and clipped to
    [0, G_l^2]. Blocks seen by fewer than two clients keep their previous value."""
    clients, row_client = np.unique(rows.clients, return_inverse=True)
    share = rows.active * G2 / np.maximum((rows.active * G2).sum(1, keepdims=True), _TINY)
    per_block = rows.mass[:, None] * share  # (M, L) estimate of G^2_{n,l}
    evidence = np.zeros((len(clients), len(G2)))
    weighted = np.zeros_like(evidence)
    np.add.at(evidence, row_client, rows.active * rows.counts[:, None])
    np.add.at(weighted, row_client, per_block * rows.counts[:, None])
    est = weighted / np.maximum(evidence, _TINY)
    p = np.ones(len(clients)) if weights is None else np.asarray(weights, float)[clients]
    zeta2 = np.array(previous, float, copy=True)
    for block in range(len(G2)):
        seen = evidence[:, block] > 0
        if seen.sum() >= 2:
            zeta2[block] = _norm_spread(est[seen, block], evidence[seen, block], p[seen], G2[block])
    return zeta2


def _norm_spread(g2: np.ndarray, counts: np.ndarray, p: np.ndarray, cap: float) -> float:
    w = p / p.sum()
    norms = np.sqrt(g2)
    spread = float(np.sum(w * (norms - np.sum(w * norms)) ** 2))
    noise = float(np.sum(w * g2 / (2 * counts)))
    return float(np.clip(spread - noise, 0.0, cap))


def _group_by_pattern(rows: MassRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reports with the same block set pooled: their mean g^2 is one better-determined equation."""
    patterns, inverse = np.unique(rows.active, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    counts = np.bincount(inverse, weights=rows.counts)
    mean_mass = np.bincount(inverse, weights=rows.counts * rows.mass) / counts
    return patterns.astype(float), mean_mass, counts


def _positive(prior: np.ndarray) -> np.ndarray:
    prior = np.asarray(prior, float)
    if prior.max() <= 0:
        return np.ones_like(prior)
    return np.maximum(prior, 1e-12 * prior.max())


def effective_block_sizes(model, blocks: Sequence, run_forward: Callable[[], object]) -> np.ndarray:
    """r_l per block: its parameter count, less the rows of every embedding table that the forward
    passes in `run_forward` never look up (the loss does not depend on them at all, so their curvature
    is exactly 0). Rows are recorded by hooks on each nn.Embedding, so word, position and token-type
    tables are all handled; a table whose weight another module also uses (a tied output layer reads
    every row) counts in full. `blocks` are zorba.blocks.Block (param_names, numel)."""
    from torch import nn

    seen: dict[int, set[int]] = {}

    def record(module, args, output) -> None:
        seen.setdefault(id(module.weight), set()).update(int(i) for i in args[0].unique().tolist())

    tables = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    hooks = [m.register_forward_hook(record) for m in tables]
    try:
        run_forward()
    finally:
        for h in hooks:
            h.remove()
    unused = _unused_embedding_entries(model, tables, seen)
    names = {id(p): n for n, p in model.named_parameters()}
    unused_by_name = {names[pid]: count for pid, count in unused.items() if pid in names}
    return np.array(
        [b.numel - sum(unused_by_name.get(n, 0) for n in b.param_names) for b in blocks], dtype=float
    )


def _unused_embedding_entries(model, tables, seen: dict[int, set[int]]) -> dict[int, int]:
    """Parameter id -> entries in rows no lookup touched, for tables used only as lookups."""
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    out = {}
    for m in tables:
        w = m.weight
        if owners.get(id(w), 0) > 1 or id(w) not in seen:
            continue  # tied to another module, or never called: every row may matter
        out[id(w)] = (w.shape[0] - len(seen[id(w)])) * int(np.prod(w.shape[1:]))
    return out
