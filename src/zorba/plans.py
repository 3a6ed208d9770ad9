"""Block planners: which blocks each client activates in a round. One interface, several methods.

The optimised ZorBA planner (zorba.planner) implements the same interface."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np

from zorba.rng import derive_key


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


class RandomBlocks(BlockPlanner):
    """Client n activates k_n blocks drawn uniformly at random each round."""

    name = "random"

    def __init__(self, num_blocks: int, counts: Sequence[int], seed: int = 0) -> None:
        self.num_blocks, self.counts, self.seed = num_blocks, list(counts), seed

    def plan(self, round_idx: int, clients: Sequence[int]) -> dict[int, tuple[int, ...]]:
        out = {}
        for c in clients:
            rng = np.random.default_rng(derive_key(self.seed, round_idx, c))
            chosen = rng.choice(self.num_blocks, size=min(self.counts[c], self.num_blocks), replace=False)
            out[c] = tuple(sorted(int(b) for b in chosen))
        return out


class RoundRobin(BlockPlanner):
    """Client n activates k_n consecutive blocks (cyclically) starting at (n + round) mod L, so every
    block is covered within L rounds even by the smallest devices."""

    name = "round-robin"

    def __init__(self, num_blocks: int, counts: Sequence[int]) -> None:
        self.num_blocks, self.counts = num_blocks, list(counts)

    def plan(self, round_idx: int, clients: Sequence[int]) -> dict[int, tuple[int, ...]]:
        L = self.num_blocks
        return {c: tuple(sorted({(c + round_idx + i) % L for i in range(min(self.counts[c], L))})) for c in clients}
