"""Clients' data: a seeded Dirichlet label-skew partition (flwr-datasets) and seeded mini-batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from zorba.errors import UserError
from zorba.wire.keys import derive_key


def dirichlet_partition(
    labels: Sequence[int], num_clients: int, alpha: float, seed: int, min_size: int = 1
) -> list[np.ndarray]:
    """Example indices per client; smaller alpha = more label skew. Uses flwr-datasets' partitioner so
    splits match what Flower users get from the same (alpha, seed)."""
    import datasets
    from flwr_datasets.partitioner import DirichletPartitioner

    datasets.disable_progress_bars()
    if num_clients > len(labels):
        raise UserError(f"{num_clients} clients but only {len(labels)} training examples")
    check_partition(labels, num_clients, alpha, seed, min_size)
    table = datasets.Dataset.from_dict({"label": list(labels), "idx": np.arange(len(labels))})
    partitioner = DirichletPartitioner(
        num_partitions=num_clients, partition_by="label", alpha=alpha, min_partition_size=min_size,
        self_balancing=False, shuffle=True, seed=seed,
    )
    partitioner.dataset = table
    try:
        parts = [np.asarray(partitioner.load_partition(i)["idx"], dtype=np.int64) for i in range(num_clients)]
    except ValueError as exc:
        raise UserError(f"cannot split {len(labels)} examples over {num_clients} clients: {exc}") from None
    for cid, part in enumerate(parts):
        if len(part) == 0:
            raise UserError(f"client {cid} received an empty partition; use fewer clients or a larger alpha")
    return parts


def check_partition(labels: Sequence[int], num_clients: int, alpha: float, seed: int, min_size: int = 1) -> None:
    """UserError, in milliseconds, for a federation the partitioner cannot split."""
    if not dirichlet_feasible(labels, num_clients, alpha, seed, min_size):
        raise UserError(f"cannot split {len(labels)} examples over {num_clients} clients with alpha {alpha}: every "
                        f"seeded Dirichlet draw leaves a client with fewer than {min_size} example(s); use fewer "
                        "clients or a larger alpha")


def dirichlet_feasible(labels: Sequence[int], num_clients: int, alpha: float, seed: int, min_size: int = 1,
                       tries: int = 11) -> bool:
    """Whether flwr-datasets' DirichletPartitioner (no self-balancing) will find a split, decided by
    replaying its draws (same generator, seed, classes and cut points) on counts only: an impossible
    federation is refused in milliseconds, where the partitioner spends minutes building index lists
    and warnings before it gives up after the same `tries` draws."""
    labels = np.asarray(labels)
    classes, per_class = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(seed)
    concentration = np.full(num_clients, float(alpha))
    for _ in range(tries):
        sizes = np.zeros(num_clients, dtype=np.int64)
        for n_k in per_class:
            cuts = (np.cumsum(rng.dirichlet(concentration)) * n_k).astype(int)[:-1]
            sizes += np.diff(np.concatenate(([0], np.clip(cuts, 0, n_k), [n_k])))
        if sizes.min() >= min_size:
            return True
    return False


def sample_batch(indices: np.ndarray, batch_size: int, *key: int) -> np.ndarray:
    """A mini-batch drawn from `indices`, a pure function of `key` (so a restarted run draws the same)."""
    rng = np.random.default_rng(derive_key(*key))
    return rng.choice(indices, size=batch_size, replace=len(indices) < batch_size)
