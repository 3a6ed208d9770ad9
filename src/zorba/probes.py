"""Shared-seed probes: every client evaluates the SAME perturbations of a block on its own data, so
the server can estimate the client gradient Gram matrix the progress objective needs
(planner/progress.py, docs/theory.md section 14). Forward passes only, like a ZO step.

Per probe p of block l a client reports two central differences, on two independent minibatches a
and b of its data: y^a = z_p . grad_l F_n(w; xi_a), y^b the same on xi_b (up to O(mu)). z_p is drawn
from `probe_seed(round_seed, block)`, identical for all clients; the minibatches from the client's
own stream. The block is restored exactly afterwards (a snapshot: four perturbation passes are not
reversible in floating point)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from zorba.client import TokenizedData
from zorba.prefix import SharedPrefix
from zorba.replica import Replica
from zorba.rng import derive_key
from zorba.scoring import Scorer
from zorba.zo import add_scaled_noise_, to_f32

_PROBE_TAG = 0x9B0BE


def probe_seed(round_seed: int, block: int) -> int:
    """The perturbation seed every client uses for its probes of `block` in this round."""
    return derive_key(round_seed, _PROBE_TAG, block)


def probe_batches(indices: np.ndarray, batch_size: int, round_seed: int, client: int, n_probes: int) -> list[np.ndarray]:
    """2 x n_probes minibatches from the client's data (a, b alternate). The two minibatches of a probe
    are drawn independently (each without replacement; they may share examples): that is what makes
    E[y^a_n y^b_n] = |grad_l f_n|^2 exactly. Disjoint draws would bias it by -sigma^2 / (|D_n| - 1),
    sigma^2 the per-example gradient variance: not small for a client with a few hundred examples."""
    rng = np.random.default_rng(derive_key(round_seed, _PROBE_TAG, client, 1 << 20))
    size = min(batch_size, len(indices))
    return [indices[rng.choice(len(indices), size=size, replace=False)] for _ in range(2 * n_probes)]


@torch.no_grad()
def probe_block(
    loss: Callable[[np.ndarray], float],
    tensors: Sequence[Sequence[torch.Tensor]],
    block: int,
    seed: int,
    batches: Sequence[np.ndarray],
    mu: float,
    share: Callable[[Callable[[], float]], Callable[[], float]] | None = None,
) -> tuple[list[float], list[float]]:
    """(y^a, y^b) for probes p = 0..len(batches)/2 - 1 of `block`: loss(batch) is the client's loss
    on a minibatch; batches alternate a, b per probe. The block's weights are restored exactly.
    `share` (SharedPrefix.shared) lets each minibatch's -mu forward reuse its +mu one's frozen prefix."""
    saved = [t.detach().clone() for t in tensors[block]]
    ya, yb = [], []
    try:
        for p in range(len(batches) // 2):
            pair = [lambda b=b: loss(b) for b in batches[2 * p : 2 * p + 2]]
            pair = pair if share is None else [share(f) for f in pair]
            add_scaled_noise_(tensors, [block], seed, p, {block: mu}, "rademacher")
            plus = [f() for f in pair]
            add_scaled_noise_(tensors, [block], seed, p, {block: -2 * mu}, "rademacher")
            minus = [f() for f in pair]
            for t, s in zip(tensors[block], saved, strict=True):
                t.copy_(s)
            ya.append(to_f32((plus[0] - minus[0]) / (2 * mu)))
            yb.append(to_f32((plus[1] - minus[1]) / (2 * mu)))
    finally:
        for t, s in zip(tensors[block], saved, strict=True):
            t.copy_(s)
    return ya, yb


def probe_client(replica: Replica, indices: np.ndarray, scorer: Scorer, data: TokenizedData, round_seed: int,
                 client: int, n_probes: int, batch_size: int, mu: float,
                 share_prefix: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(y^a, y^b), each (L, n_probes), for every block of a client's replica, one block at a time:
    the block is promoted to fp32 for its probes (replica.snapshot) and brought back after.
    `share_prefix`: each minibatch's -mu forward reuses the frozen layers before the block (same bits)."""
    batches = probe_batches(indices, batch_size, round_seed, client, n_probes)

    def loss(batch: np.ndarray) -> float:
        return scorer.loss([data.ids[i] for i in batch], [data.labels[i] for i in batch])

    L = replica.num_blocks
    ya, yb = np.zeros((L, n_probes)), np.zeros((L, n_probes))
    for b in range(L):
        snap = replica.snapshot([b])
        try:
            with contextlib.ExitStack() as stack:
                share = None
                if share_prefix:  # the prefix's hooks only when it is shared
                    share = stack.enter_context(SharedPrefix(replica.lm.model, replica.tensors[b])).shared
                ya[b], yb[b] = probe_block(loss, replica.tensors, b, probe_seed(round_seed, b), batches, mu, share)
        finally:
            replica.restore(snap)
    return ya, yb
