"""Curvature-weighted block sizes for the bound's noise term (docs/theory.md, section 12).

The ZO noise a block adds to a step enters the descent through E[g^T H g] = |g_S|^2 tr(H_SS) + ...,
so what the bound charges as L * d_l is really the block's Hessian trace tr(H_ll): on MiniLM about
40-260 per block against L * d_l ~ 10^6 (docs/results.md). The server estimates it without client
data by Hutchinson's estimator with central second differences on a public batch:

    tr(H_ll) = E_z[f(w + mu z) + f(w - mu z) - 2 f(w)] / mu^2,   z Rademacher on block l

exact for a quadratic (each probe gives z^T H z), two forwards per probe per block. The weights are
restored from an exact copy after each block. The result, r_l = tr(H_ll) / L clipped to [1, d_l],
goes into `BoundConstants.effective_sizes` (`zorba run --curvature-sizes`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from zorba.rng import add_noise_many_, derive_key


@torch.no_grad()
def block_curvature_traces(
    loss: Callable[[], float],
    tensors: Sequence[Sequence[torch.Tensor]],
    probes: int = 4,
    mu: float = 1e-2,
    seed: int = 0,
) -> np.ndarray:
    """Hutchinson estimates of tr(H_ll) per block (may be negative away from a minimum)."""
    if probes < 1 or mu <= 0:
        raise ValueError("probes must be >= 1 and mu > 0")
    base = loss()
    traces = []
    for b, block in enumerate(tensors):
        saved = [t.detach().clone() for t in block]
        samples = []
        for p in range(probes):
            keys = [derive_key(seed, 0xC0A7, b, p, i) for i in range(len(block))]
            add_noise_many_(block, keys, [mu] * len(block))
            plus = loss()
            add_noise_many_(block, keys, [-2 * mu] * len(block))
            minus = loss()
            for t, s in zip(block, saved, strict=True):
                t.copy_(s)
            samples.append((plus + minus - 2 * base) / mu**2)
        traces.append(float(np.mean(samples)))
    return np.array(traces)


def curvature_sizes(traces: np.ndarray, block_sizes: np.ndarray, smooth: float = 1.0) -> np.ndarray:
    """r_l = tr(H_ll) / L, clipped to [1, d_l]: the effective sizes for BoundConstants (a block with
    non-positive measured curvature still counts one coordinate, so r_l > 0 as the bound requires)."""
    return np.clip(np.asarray(traces, float) / smooth, 1.0, np.asarray(block_sizes, float))
