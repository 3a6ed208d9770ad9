"""Windows: when no single-round plan can cover every block, rotate over R plans.

Theorem 1 (docs/theory.md) holds for a window of plans drawn uniformly at random each round, with the
rate divided by pi_min, the least fraction of the window's plans covering a block. We split the
blocks into R groups, the fewest that the packer (packing.py) fits into the clients' budgets, so every
block is covered in exactly one plan (pi_min = 1/R), and plan each group as its own problem: its
blocks are required; a client that can hold none of them may take any block that fits (every client
trains something every round).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from zorba.planner.bound import schedule_bound
from zorba.planner.packing import pack_blocks
from zorba.planner.problem import CoverageInfeasible, Plan, Problem


@dataclass(frozen=True)
class Schedule:
    plans: list[Plan]
    bound: float  # J of the window (equals plans[0].bound for a window of one)
    seconds: float

    @property
    def window(self) -> int:
        return len(self.plans)


def block_groups(problem: Problem, seed: int = 0) -> list[np.ndarray]:
    """Masks of the required blocks per round, for the smallest R the packer manages."""
    delta = problem.mem.delta
    required = np.flatnonzero(problem.must_cover)
    room = min(float(np.clip(problem.capacity, 0, None).sum()), problem.eps_capacity)
    first = max(1, int(np.ceil(delta[required].sum() / room))) if room > 0 else len(required)
    for R in range(first, max(first, len(required)) + 1):
        groups = _pack_rounds(problem, required, R, seed)
        if groups is not None:
            return groups
    raise CoverageInfeasible("some block fits no client's budget, so no window covers it")


def _pack_rounds(problem: Problem, required: np.ndarray, R: int, seed: int) -> list[np.ndarray] | None:
    """Bins are (round, client) pairs; a round must also respect eps."""
    fits = np.tile(problem.fits, (R, 1))
    holder = pack_blocks(required, problem.mem.delta, fits, np.tile(problem.capacity, R), seed)
    if holder is None:
        return None
    rounds = np.where(holder >= 0, holder // problem.n_clients, -1)
    groups = [rounds == r for r in range(R)]
    if any(problem.mem.delta[g].sum() > problem.eps_capacity for g in groups) or not all(
        g.any() for g in groups
    ):
        return None
    return groups


def round_problem(problem: Problem, group: np.ndarray) -> Problem:
    can_help = (problem.fits & group[None, :]).any(1)
    allowed = problem.fits & (group[None, :] | ~can_help[:, None])
    return problem.restricted(group, allowed)


def window_schedule(problem: Problem, solve_round: Callable[[Problem], Plan], started: float) -> Schedule:
    plans = [solve_round(round_problem(problem, g)) for g in block_groups(problem)]
    value = schedule_bound([p.A for p in plans], problem.consts, problem.must_cover)
    return Schedule(plans, value, time.perf_counter() - started)
