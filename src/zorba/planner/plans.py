"""Block planners: which blocks each client activates in a round. One interface, several methods.

The energy planner (zorba.planner.energy) implements the same interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from zorba.wire.keys import derive_key


class BlockPlanner(ABC):
    """Interface: `plan` returns client id -> sorted active block ids; `observe` gets the scalars each
    client reported that round (for planners that re-estimate their constants)."""

    name = "base"

    @abstractmethod
    def plan(self, round_idx: int, clients: Sequence[int]) -> dict[int, tuple[int, ...]]:
        """Client id -> sorted ids of the blocks it activates this round."""

    def observe(self, round_idx: int, reports: Mapping[int, Sequence[float]]) -> None:
        return None


class AllBlocks(BlockPlanner):
    name = "all"

    def __init__(self, num_blocks: int) -> None:
        self.num_blocks = num_blocks

    def plan(self, round_idx: int, clients: Sequence[int]) -> dict[int, tuple[int, ...]]:
        return {c: tuple(range(self.num_blocks)) for c in clients}


class LabelHeadOnly(BlockPlanner):
    """Every client perturbs the label head alone (core/label_head.py): the fewest weights, the
    least memory, and a frozen body, so each client computes its features once a round and takes
    many cheap steps on them (federation/client.py)."""

    name = "head"

    def __init__(self, head_block: int) -> None:
        self.head_block = head_block

    def plan(self, round_idx: int, clients: Sequence[int]) -> dict[int, tuple[int, ...]]:
        return {c: (self.head_block,) for c in clients}


class BudgetFeasible(BlockPlanner):
    """Base of the planners that give a client only blocks its memory budget holds: each client walks
    an order of the blocks and takes every block that still fits (memory is affine in the blocks:
    planner/memory_model.py). `spare[n]` = budget - fixed memory, `delta[l]` = block l's cost."""

    def __init__(self, spare: Sequence[float], delta: Sequence[float], seed: int = 0) -> None:
        self.spare, self.delta, self.seed = [float(s) for s in spare], [float(d) for d in delta], seed

    @property
    def num_blocks(self) -> int:
        return len(self.delta)

    def plan(self, round_idx: int, clients: Sequence[int]) -> dict[int, tuple[int, ...]]:
        return {c: self.fill(self.order(round_idx, c), self.spare[c]) for c in clients}

    def fill(self, order: Sequence[int], spare: float) -> tuple[int, ...]:
        taken, used = [], 0.0
        for b in order:
            if used + self.delta[b] <= spare:
                taken.append(int(b))
                used += self.delta[b]
        return tuple(sorted(taken))

    def rng(self, round_idx: int, client: int) -> np.random.Generator:
        return np.random.default_rng(derive_key(self.seed, round_idx, client))

    @abstractmethod
    def order(self, round_idx: int, client: int) -> Sequence[int]:
        """The order in which client `client` takes blocks this round."""


class FillBudget(BudgetFeasible):
    """The last blocks first, as many as fit: the plan a practitioner writes by hand (the layers
    nearest the output adapt a pretrained model most), the same every round."""

    name = "fill"

    def order(self, round_idx: int, client: int) -> Sequence[int]:
        return range(self.num_blocks - 1, -1, -1)


class FeasibleRandom(BudgetFeasible):
    """A random order redrawn every round: a random maximal set that fits."""

    name = "feasible-random"

    def order(self, round_idx: int, client: int) -> Sequence[int]:
        return self.rng(round_idx, client).permutation(self.num_blocks)


class FeasibleRoundRobin(BudgetFeasible):
    """Consecutive blocks from (client + round) mod L on, cyclically, as many as fit."""

    name = "feasible-round-robin"

    def order(self, round_idx: int, client: int) -> Sequence[int]:
        L = self.num_blocks
        return [(client + round_idx + i) % L for i in range(L)]


class FedRA(BudgetFeasible):
    """FedRA-style random allocation (Su et al., 2023): every round each client gets a random subset
    of the transformer layers, as many as its budget holds; embeddings and head stay frozen."""

    name = "fedra"

    def __init__(self, spare: Sequence[float], delta: Sequence[float], layers: Sequence[int], seed: int = 0) -> None:
        super().__init__(spare, delta, seed)
        self.layers = list(layers)

    def order(self, round_idx: int, client: int) -> Sequence[int]:
        return [self.layers[i] for i in self.rng(round_idx, client).permutation(len(self.layers))]


class AllIfFits(BlockPlanner):
    """No block activation under budgets: every block, for the clients whose budget holds them all;
    the others sit the run out. What a federation without partial training can do with memory-poor
    clients, and the baseline block activation has to beat by letting them contribute."""

    name = "all-if-fits"

    def __init__(self, spare: Sequence[float], delta: Sequence[float]) -> None:
        self.num_blocks = len(delta)
        need = float(np.sum(delta))
        self.fits = {n for n, s in enumerate(spare) if float(s) >= need}
        if not self.fits:
            raise ValueError("no client's memory budget holds every block (planner all-if-fits)")

    def plan(self, round_idx: int, clients: Sequence[int]) -> dict[int, tuple[int, ...]]:
        return {c: tuple(range(self.num_blocks)) for c in clients if c in self.fits}
