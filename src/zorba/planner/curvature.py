"""Per-block curvature for the bound: Hessian traces tr(H_ll) and top eigenvalues lambda_l = |H_ll|
(docs/theory.md, sections 12 and 13).

The ZO noise a block adds to a step enters the descent through E[g^T H g] = |g_S|^2 tr(H_SS) + ...,
so what the bound charges as L * d_l is really the block's Hessian trace tr(H_ll): on MiniLM about
40-260 per block against L * d_l ~ 10^6 (docs/results.md). The server estimates it without client
data by Hutchinson's estimator with central second differences on a public batch:

    tr(H_ll) = E_z[f(w + mu z) + f(w - mu z) - 2 f(w)] / mu^2,   z Rademacher on block l

exact for a quadratic (each probe gives z^T H z), two forwards per probe per block. The result,
r_l = tr(H_ll) / L clipped to [1, d_l], goes into `BoundConstants.effective_sizes`
(`zorba run --curvature-sizes`).

Per-block smoothness L_l (A1', `BoundConstants.block_smooth`) is the block's worst direction, not its
average: power iteration on H_ll from a Rademacher start, with Hessian-vector products by central
differences of the block's gradient, H v = [grad_l f(w + mu v) - grad_l f(w - mu v)] / (2 mu) + O(mu^2)
(two backward passes per iteration per block). With both, `blockwise_constants` gives L_l = lambda_l
and r_l = tr(H_ll) / lambda_l, so that the bound's noise dimension L_l r_l is the trace again.
Every probe restores the weights from an exact copy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from zorba.rng import add_noise_many_, derive_key

TRACE_TAG, POWER_TAG = 0xC0A7, 0x9017


@contextmanager
def _restored(block: Sequence[torch.Tensor]) -> Iterator[None]:
    """Perturb the block freely inside; its exact values are back afterwards."""
    saved = [t.detach().clone() for t in block]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, s in zip(block, saved, strict=True):
                t.copy_(s)


def _rademacher_keys(seed: int, tag: int, b: int, probe: int, n_tensors: int) -> list[int]:
    return [derive_key(seed, tag, b, probe, i) for i in range(n_tensors)]


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
        samples = []
        for p in range(probes):
            keys = _rademacher_keys(seed, TRACE_TAG, b, p, len(block))
            with _restored(block):
                add_noise_many_(block, keys, [mu] * len(block))
                plus = loss()
                add_noise_many_(block, keys, [-2 * mu] * len(block))
                minus = loss()
            samples.append((plus + minus - 2 * base) / mu**2)
        traces.append(float(np.mean(samples)))
    return np.array(traces)


def _block_gradient(loss: Callable[[], torch.Tensor], block: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """grad_l f at the current weights, leaving the tensors' requires_grad flags as they were."""
    flags = [t.requires_grad for t in block]
    try:
        with torch.enable_grad():
            for t in block:
                t.requires_grad_(True)
            return [g.detach() for g in torch.autograd.grad(loss(), list(block), allow_unused=True,
                                                            materialize_grads=True)]
    finally:
        for t, f in zip(block, flags, strict=True):
            t.requires_grad_(f)


def _hessian_vector(loss, block, v: list[torch.Tensor], mu: float) -> list[torch.Tensor]:
    """H_ll v by central differences of the block's gradient (exact for a quadratic)."""
    with _restored(block):
        with torch.no_grad():
            for t, x in zip(block, v, strict=True):
                t.add_(x, alpha=mu)
        plus = _block_gradient(loss, block)
        with torch.no_grad():
            for t, x in zip(block, v, strict=True):
                t.add_(x, alpha=-2 * mu)
        minus = _block_gradient(loss, block)
    return [(p - m) / (2 * mu) for p, m in zip(plus, minus, strict=True)]


def _norm(v: Sequence[torch.Tensor]) -> float:
    return float(torch.sqrt(sum(torch.sum(x.double() ** 2) for x in v)))


def block_top_curvatures(
    loss: Callable[[], torch.Tensor],
    tensors: Sequence[Sequence[torch.Tensor]],
    iters: int = 10,
    mu: float = 1e-3,
    seed: int = 0,
) -> np.ndarray:
    """|lambda|_max(H_ll) per block by power iteration (loss() returns a scalar tensor with a graph):
    a lower estimate of the block's smoothness that converges from below as iters grows."""
    if iters < 1 or mu <= 0:
        raise ValueError("iters must be >= 1 and mu > 0")
    tops = []
    for b, block in enumerate(tensors):
        v = [torch.zeros_like(t) for t in block]
        add_noise_many_(v, _rademacher_keys(seed, POWER_TAG, b, 0, len(block)), [1.0] * len(block))
        top = 0.0
        for _ in range(iters):
            scale = _norm(v)
            if scale == 0.0:  # H_ll v = 0: the block is flat along everything seen
                break
            v = [x / scale for x in v]
            hv = _hessian_vector(loss, block, v, mu)
            top = abs(float(sum(torch.sum(x.double() * h.double()) for x, h in zip(v, hv, strict=True))))
            v = hv
        tops.append(top)
    return np.array(tops)


def curvature_sizes(traces: np.ndarray, block_sizes: np.ndarray, smooth: float | np.ndarray = 1.0) -> np.ndarray:
    """r_l = tr(H_ll) / L (or / L_l, per block), clipped to [1, d_l]: the effective sizes for
    BoundConstants (a block with non-positive measured curvature still counts one coordinate, so
    r_l > 0 as the bound requires)."""
    return np.clip(np.asarray(traces, float) / smooth, 1.0, np.asarray(block_sizes, float))


def blockwise_constants(
    traces: np.ndarray, tops: np.ndarray, block_sizes: np.ndarray, floor: float = 1e-12
) -> tuple[np.ndarray, np.ndarray]:
    """(L_l, r_l) for BoundConstants(block_smooth=L_l, effective_sizes=r_l): L_l = lambda_l (at least
    `floor`, the bound needs L_l > 0) and r_l = tr(H_ll) / L_l in [1, d_l], so L_l r_l = tr(H_ll)."""
    smooth = np.maximum(np.asarray(tops, float), floor)
    return smooth, curvature_sizes(traces, block_sizes, smooth)
