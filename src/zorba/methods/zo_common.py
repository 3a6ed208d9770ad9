"""What the ZO baselines share: local SPSA steps on ALL blocks of the working model (zorba.core.zo), and
applying an aggregated list of (seed, scalar) to it with zorba's own replay (Replica.apply), so a
baseline's global update is bit-for-bit the replay its clients would run."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zorba.core.replica import Replica
from zorba.core.zo import spsa_step
from zorba.methods.base import Setup
from zorba.wire.protocol import ClientUpdate, LogEntry, StepReport


def all_blocks(replica: Replica) -> tuple[int, ...]:
    return tuple(range(replica.num_blocks))


def local_zo_steps(
    setup: Setup, replica: Replica, cid: int, round_idx: int, seeds: Sequence[int]
) -> tuple[list[StepReport], float]:
    """One SPSA step per seed on every block, on client cid's mini-batches; returns steps, mean loss."""
    cfg, steps, losses = setup.cfg, [], []
    for k, seed in enumerate(seeds):
        seqs, labels = setup.batch(cid, round_idx, k)
        step, loss = spsa_step(
            lambda seqs=seqs, labels=labels: setup.scorer.loss(seqs, labels),
            replica.tensors, all_blocks(replica), seed, cfg.mu, cfg.lr, cfg.q, cfg.dist,
        )
        steps.append(step)
        losses.append(loss)
    return steps, float(np.mean(losses))


def apply_scalars(replica: Replica, round_idx: int, lr: float, q: int, dist: str, steps: Sequence[StepReport]) -> None:
    """w -= lr / q * sum over steps and perturbations of g * z(seed), on all blocks."""
    update = ClientUpdate(0, all_blocks(replica), tuple(steps), 1.0)
    replica.apply(LogEntry(round_idx, lr, q, dist, (update,)))


def revert_local_steps(replica: Replica, round_idx: int, lr: float, q: int, dist: str, steps: Sequence[StepReport]) -> None:
    """Return to the global weights by regenerating each local step's z and adding its update back, last
    step first, as MeZO's and DeComFL's clients do: no copy of the weights, exact up to float rounding."""
    apply_scalars(replica, round_idx, -lr, q, dist, steps[::-1])
    replica.cursor -= 1  # an undo, not a log entry


def mean_uploaded_scalars(
    method, clients: Sequence[int], round_idx: int, size: int
) -> tuple[np.ndarray, list[int], list[float], float]:
    """Run each client's update, average the `size` scalars they upload (float32, as on the wire);
    returns (mean, upload sizes, losses, client seconds summed). Shared by the seed-and-scalar
    baselines (DeComFL, FedKSeed)."""
    from zorba.methods.wire import decode_scalars

    total = np.zeros(size, dtype=np.float64)
    ups, losses, busy = [], [], 0.0
    weights = method.client_weights(clients)
    for i, cid in enumerate(clients):
        up = method.train_client(cid, round_idx)
        scalars = np.asarray(decode_scalars(up.data)[2], dtype=np.float64)
        total += scalars if weights is None else weights[i] * scalars
        ups.append(len(up.data))
        losses.append(up.loss)
        busy += up.seconds
        method.seen[cid] = round_idx
    return (total / len(clients) if weights is None else total).astype(np.float32), ups, losses, busy
