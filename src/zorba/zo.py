"""Zeroth-order SPSA on a subset of blocks, in place: perturb, evaluate, restore and update without
storing z (it is regenerated from its seed) and without touching inactive blocks."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from zorba.protocol import StepReport, stream_key
from zorba.rng import add_noise_

BlockTensors = Sequence[Sequence[torch.Tensor]]


def add_scaled_noise_(
    tensors: BlockTensors, blocks: Sequence[int], sseed: int, perturbation: int, scales: dict[int, float], dist: str
) -> None:
    """w_l += scales[l] * z_l for each listed block, in the fixed replay order (block, tensor)."""
    for b in blocks:
        scale = scales[b]
        if scale == 0.0:
            continue
        for i, t in enumerate(tensors[b]):
            add_noise_(t, stream_key(sseed, perturbation, b, i), scale, dist)


def to_f32(x: float) -> float:
    """Round to float32: the wire carries float32 scalars, and replay must use exactly those."""
    return float(np.float32(x))


def spsa_step(
    loss: Callable[[], float],
    tensors: BlockTensors,
    blocks: Sequence[int],
    sseed: int,
    mu: float,
    lr: float,
    q: int = 1,
    dist: str = "rademacher",
) -> tuple[StepReport, float]:
    """One local ZO-SGD step; returns the step's report and the mean of its perturbed losses.

    Each perturbation j: w + mu z_j, evaluate; w - mu z_j, evaluate; g_j = (L+ - L-) / (2 mu). All q
    are evaluated at the same w, then w -= lr/q * sum_j g_j z_j. The restore of the last perturbation
    is fused with its update (one pass fewer over the active weights).
    """
    blocks = sorted(blocks)
    scalars, losses = [], []

    def shift(j: int, scale: float) -> None:
        add_scaled_noise_(tensors, blocks, sseed, j, dict.fromkeys(blocks, scale), dist)

    for j in range(q):
        shift(j, mu)
        plus = loss()
        shift(j, -2.0 * mu)
        minus = loss()
        g = to_f32((plus - minus) / (2.0 * mu))
        scalars.append(g)
        losses += [plus, minus]
        if j < q - 1:
            shift(j, mu)
    shift(q - 1, mu - lr * scalars[-1] / q)
    for j in range(q - 1):
        shift(j, -lr * scalars[j] / q)
    return StepReport(sseed, tuple(scalars)), float(np.mean(losses))
