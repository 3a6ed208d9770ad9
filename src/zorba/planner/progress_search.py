"""Plans chosen by the progress objective Phi (planner/progress.py, docs/theory.md section 14).

Phi is not separable over clients (coverage sets the weights, and a client's whole set sets its
noise), so the search is coordinate descent over the clients' feasible block sets (the same sets the
exact MILP enumerates: within budget, non-empty): client by client, and then pair by pair, take the
sets that lower Phi most with the others fixed, until a full sweep changes nothing. Every candidate keeps the problem's
constraints: budgets (by construction), the required blocks covered (Theorem 1's condition, so the
run still converges), and the eps cap on total memory. Ties go to the set with less memory. It starts
from the bound's plan, from the largest feasible plan and from a few seeded random feasible plans,
and keeps the best end point, so it never returns a plan with a higher Phi than the bound's plan. `tests/test_planner_progress.py` measures
its gap to brute force on small instances.
"""

from __future__ import annotations

import numpy as np

from zorba.planner.milp import feasible_sets
from zorba.planner.problem import Problem
from zorba.planner.progress import ProgressConstants, one_round_change

MAX_SWEEPS = 50
MAX_PAIR_CHOICES = 20_000  # joint choices of a client pair evaluated in one batch
RESTARTS = 8  # random starts besides the bound's plan and the largest one


def progress_search(
    problem: Problem, start: np.ndarray, consts: ProgressConstants, restarts: int = RESTARTS, seed: int = 0
) -> np.ndarray:
    """The plan (N, L bool) of least Phi that coordinate descent reaches from `start`, from the largest
    feasible plan and from `restarts` random feasible plans (seeded)."""
    sets = feasible_sets(problem)
    rng = np.random.default_rng(seed)
    starts = [np.asarray(start, bool), np.array([s[np.argmax(s.sum(1))] for s in sets])]
    starts += [np.array([s[rng.integers(len(s))] for s in sets]) for _ in range(restarts)]
    ends = [_descend(problem, sets, A, consts) for A in starts if _admissible(problem, A[None])[0]]
    values = [float(one_round_change(A, consts)) for A in ends]
    return ends[int(np.argmin(values))]


def _descend(problem: Problem, sets: list[np.ndarray], A: np.ndarray, consts: ProgressConstants) -> np.ndarray:
    """Single-client moves until none helps, then pair moves (two clients' sets at once: a block
    handed from one client to another is a pair move when coverage is required), until neither helps."""
    A, current = A.copy(), float(one_round_change(A, consts))
    for _ in range(MAX_SWEEPS):
        A, current, moved = _sweep(problem, sets, A, current, consts, pairs=False)
        if not moved:
            A, current, moved = _sweep(problem, sets, A, current, consts, pairs=True)
        if not moved:
            break
    return A


def _sweep(problem, sets, A, current, consts, pairs: bool):
    moved = False
    groups = _pairs(sets) if pairs else [(n,) for n in range(len(sets))]
    for group in groups:
        choices = [sets[n] for n in group]
        index = np.stack(np.meshgrid(*[np.arange(len(c)) for c in choices], indexing="ij"), -1).reshape(-1, len(group))
        candidates = np.repeat(A[None], len(index), axis=0)
        memory = np.zeros(len(index))
        for k, n in enumerate(group):
            candidates[:, n] = choices[k][index[:, k]]
            memory += choices[k][index[:, k]] @ problem.mem.delta
        values = np.where(_admissible(problem, candidates), one_round_change(candidates, consts), np.inf)
        best = _lexicographic(values, memory)
        if values[best] < current - 1e-12 * abs(current):
            A, current, moved = candidates[best], float(values[best]), True
    return A, current, moved


def _pairs(sets: list[np.ndarray]) -> list[tuple[int, int]]:
    """Client pairs whose joint choices are few enough to evaluate at once."""
    N = len(sets)
    return [(n, m) for n in range(N) for m in range(n + 1, N) if len(sets[n]) * len(sets[m]) <= MAX_PAIR_CHOICES]


def _admissible(problem: Problem, plans: np.ndarray) -> np.ndarray:
    covered = np.all(plans.any(axis=1) | ~problem.must_cover, axis=1)
    if problem.eps is None:
        return covered
    active = (plans @ problem.mem.delta).sum(-1)  # what eps caps, as in every other solver
    return covered & (active <= problem.eps_capacity * (1 + 1e-12) + 1e-9)


def _lexicographic(values: np.ndarray, memory: np.ndarray) -> int:
    """Least Phi; among values equal to float precision, least memory."""
    best = float(values.min())
    close = np.flatnonzero(values <= best + 1e-12 * max(abs(best), 1e-300))
    return int(close[np.argmin(memory[close])])
