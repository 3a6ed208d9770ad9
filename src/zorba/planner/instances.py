"""Synthetic planning instances shaped like a transformer, for tests and benchmarks."""

from __future__ import annotations

import numpy as np

from zorba.planner.bound import BoundConstants
from zorba.planner.memory_model import MemoryModel

DEVICE_FRACTIONS = (1.0, 0.75, 0.5, 0.25)  # the runner's default device classes


def transformer_instance(
    n_clients: int,
    n_blocks: int,
    seed: int = 0,
    local_steps: int = 5,
    unequal_weights: bool = False,
    lr: float = 2e-5,
) -> tuple[BoundConstants, MemoryModel, np.ndarray]:
    """Embeddings (large), equal layers, a small head (sizes of a 125M-parameter model, jittered);
    per-block gradient mass proportional to size times a random factor in [0.3, 3]; heterogeneity a
    random fraction of it; four device classes whose budgets hold 1, 3/4, 1/2, 1/4 of the blocks."""
    rng = np.random.default_rng(seed)
    d = np.full(n_blocks, 7.1e6)
    d[0], d[-1] = 3.9e7, 1.5e6
    d *= rng.uniform(0.9, 1.1, n_blocks)
    G2 = d / d.sum() * rng.uniform(0.3, 3.0, n_blocks)
    weights = rng.uniform(0.5, 2.0, n_clients) if unequal_weights else None
    consts = BoundConstants(
        d,
        G2,
        G2 * rng.uniform(0.0, 1.0, n_blocks),
        local_steps=local_steps,
        lr=lr,
        rounds=100,
        weights=weights,
    )
    mem = MemoryModel.from_block_sizes(d, activation_bytes=2e8)
    fractions = np.array(DEVICE_FRACTIONS)[np.arange(n_clients) % len(DEVICE_FRACTIONS)]
    costliest = np.sort(mem.delta)[::-1]
    counts = np.maximum(1, np.ceil(fractions * n_blocks).astype(int))
    budgets = mem.fixed(n_clients) + np.array([costliest[:k].sum() for k in counts])
    return consts, mem, budgets
