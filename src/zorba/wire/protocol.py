"""The federated protocol's messages and pure rules: who gets which seed, how a round's scalars are
weighted per block. No I/O, no torch, no engine: the in-process runner and Flower share this."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from zorba.wire.keys import derive_key, derive_keys

_STEP_TAG = 0x5EED


@dataclass(frozen=True)
class Hyper:
    """Per-round hyper-parameters the server sends (it may change them between rounds)."""

    lr: float
    mu: float
    q: int = 1
    local_steps: int = 1
    batch_size: int = 16
    dist: str = "rademacher"


@dataclass(frozen=True)
class StepReport:
    """One local ZO step: its seed and the q projected-gradient scalars (float32 values)."""

    seed: int
    scalars: tuple[float, ...]


@dataclass(frozen=True)
class ClientUpdate:
    """A client's contribution to a round: its active blocks and its steps' (seed, scalars)."""

    client: int
    blocks: tuple[int, ...]
    steps: tuple[StepReport, ...]
    weight: float = 1.0
    lr_scale: float = 1.0  # the client's step = entry.lr * lr_scale (planner/steprule.py: it depends on the blocks)


@dataclass(frozen=True)
class LogEntry:
    """One round of the append-only log; base weights + replay of all entries = global weights."""

    round: int
    lr: float
    q: int
    dist: str
    updates: tuple[ClientUpdate, ...]

    def scales(self) -> dict[int, float]:
        """Client -> the factor its local steps multiplied the round's lr by (planner/steprule.py)."""
        return {u.client: u.lr_scale for u in self.updates}

    def coefficients(self) -> dict[tuple[int, int], float]:
        """(client, block) -> weight of that client's steps on that block: a block is the weighted mean
        of the clients that activated it (clients that did not say nothing about it). Summing instead
        of averaging (larger steps on well-covered blocks) was measured and lost (docs/theory.md, A3)."""
        totals: dict[int, float] = {}
        for u in self.updates:
            for b in u.blocks:
                totals[b] = totals.get(b, 0.0) + u.weight
        return {(u.client, b): u.weight / totals[b] for u in self.updates for b in u.blocks}


@dataclass(frozen=True)
class RoundPlan:
    """Server -> client: what to train this round and the log entries the client has not seen."""

    round: int
    client: int
    blocks: tuple[int, ...]
    round_seed: int
    hyper: Hyper
    catch_up: tuple[LogEntry, ...] = ()


@dataclass(frozen=True)
class Report:
    """Client -> server: the steps' (seed, scalars) and a few metrics. On the wire the seeds are left
    out: the server derives them from the plan it sent (codec.decode_report)."""

    round: int
    client: int
    steps: tuple[StepReport, ...]
    loss: float  # mean of the two perturbed losses over the round's steps: a free training-loss proxy
    metrics: dict[str, float] = field(default_factory=dict)


def round_seed(run_seed: int, round_idx: int) -> int:
    return derive_key(run_seed, round_idx)


def step_seed(rseed: int, client: int, step: int) -> int:
    """The seed of client `client`'s local step `step`; the server can recompute it to check reports."""
    return derive_key(rseed, _STEP_TAG, client, step)


def stream_key(sseed: int, perturbation: int, block: int, tensor: int) -> int:
    """One generator stream per (step, perturbation, block, tensor): no stream serves two blocks."""
    return derive_key(sseed, perturbation, block, tensor)


def stream_keys(sseed: int, perturbation: int, tensors: Iterable[tuple[int, int]]) -> list[int]:
    """stream_key for each (block, tensor) of one perturbation (the shared prefix hashed once)."""
    return derive_keys((sseed, perturbation), tensors)


def entries_after(log: Iterable[LogEntry], cursor: int) -> tuple[LogEntry, ...]:
    """The entries a replica at `cursor` (number of entries applied) still has to replay."""
    return tuple(e for i, e in enumerate(log) if i >= cursor)


def to_f32(x: float) -> float:
    """Round to float32: the wire carries float32 scalars, and replay must use exactly those."""
    return float(np.float32(x))
