"""A copy of the global weights that follows the log: the server holds one, each client device one.

Replay is the only way weights change between rounds, so a replica at cursor c holds exactly
base + entries[:c] on any machine (bit-exact for Rademacher z, see rng.py)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from zorba.core.blocks import block_tensors
from zorba.core.models import LoadedModel, state_digest
from zorba.core.rng import add_noise_sequences_
from zorba.wire.protocol import LogEntry, stream_keys

Op = tuple[int, int, float]  # (step seed, perturbation index, scale) applied to one block


def replay_ops(entry: LogEntry) -> dict[int, list[Op]]:
    """Per block, the adds a log entry makes to it, in log order (only a tensor's own order matters
    for bit-exact replay; different blocks are independent)."""
    coef = entry.coefficients()
    ops: dict[int, list[Op]] = {}
    for u in entry.updates:
        for step in u.steps:
            for j, g in enumerate(step.scalars):
                for b in sorted(u.blocks):
                    ops.setdefault(b, []).append((step.seed, j, -entry.lr * u.lr_scale * coef[(u.client, b)] * g / entry.q))
    return dict(sorted(ops.items()))


def block_keys(b: int, tensor_ids: int | Sequence[int], ops: Sequence[Op]) -> list[list[int]]:
    """The stream keys of each listed tensor of block b (an int n: tensors 0..n-1) for each op."""
    ids = range(tensor_ids) if isinstance(tensor_ids, int) else tensor_ids
    per_op = [stream_keys(seed, j, [(b, i) for i in ids]) for seed, j, _ in ops]
    return [list(keys) for keys in zip(*per_op, strict=True)] if per_op else [[] for _ in ids]


class Replica:
    def __init__(self, lm: LoadedModel) -> None:
        self.lm = lm
        self.tensors = block_tensors(lm.model, lm.blocks)
        self.cursor = 0  # number of log entries applied

    @property
    def num_blocks(self) -> int:
        return len(self.tensors)

    def apply(self, entry: LogEntry) -> None:
        """w_l -= lr * s_n * coef(n, l) * g / q * z for every client, step, perturbation and block, in log
        order; each block's whole sequence goes to the generator at once (one launch on a GPU)."""
        for b, ops in replay_ops(entry).items():
            n = len(self.tensors[b])
            add_noise_sequences_(self.tensors[b], block_keys(b, n, ops), [[s for *_, s in ops]] * n, entry.dist)
        self.cursor += 1

    def sync(self, entries: Iterable[LogEntry], first_index: int | None = None) -> int:
        """Replay the entries this replica has not applied yet; `first_index` is the log index of
        entries[0] (default: the cursor). Returns how many were applied."""
        entries = list(entries)
        start = self.cursor if first_index is None else first_index
        if start > self.cursor:
            raise ValueError(f"log gap: replica at entry {self.cursor}, got entries from {start}")
        todo = entries[self.cursor - start :]
        for entry in todo:
            self.apply(entry)
        return len(todo)

    def snapshot(self, blocks: Sequence[int]) -> dict[int, list[torch.Tensor]]:
        """Exact copies of the active blocks: local steps are not exactly reversible in floating
        point, and the client must return to the global weights before it replays the round."""
        return {b: [t.detach().clone() for t in self.tensors[b]] for b in blocks}

    @torch.no_grad()
    def restore(self, snap: dict[int, list[torch.Tensor]]) -> None:
        for b, saved in snap.items():
            for t, s in zip(self.tensors[b], saved, strict=True):
                t.copy_(s)

    def digest(self) -> str:
        return state_digest(self.lm.model)
