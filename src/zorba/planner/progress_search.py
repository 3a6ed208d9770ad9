"""Plans chosen by the progress objective Phi (planner/progress.py, docs/theory.md section 14).

Phi is not separable over clients (coverage sets the weights, and a client's whole set sets its
noise), so the search is coordinate descent over the clients' block sets: client by client, and then
pair by pair, take the sets that lower Phi most with the others fixed, until a full sweep changes
nothing. A client's options are all its feasible sets (within budget, non-empty: the sets the exact
MILP enumerates) when there are few enough, else the sets one block away from its current one (add
or drop a block), which scales to large models. Every candidate keeps the problem's constraints:
budgets, the required blocks covered (Theorem 1's condition, so the run still converges) and the eps
cap on total memory. Ties go to less memory. The search starts from the bound's plan, from the
largest feasible plan and from a few seeded random ones and keeps the best end point, so it never
returns a plan with a higher Phi than the bound's; with a deadline it stops there with the best so
far. `tests/test_planner_progress.py` measures its gap to brute force on small instances.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from zorba.planner.milp import TooLargeForExact, feasible_sets
from zorba.planner.problem import Problem
from zorba.planner.progress import ProgressConstants, one_round_change

MAX_SWEEPS = 50
MAX_ENUMERATED_BLOCKS = 16  # above this a client's options are its one-block neighbours
MAX_PAIR_CHOICES = 20_000  # joint choices of a client pair evaluated in one batch
MAX_PAIR_CLIENTS = 16  # pair moves only for small federations (N^2 / 2 pairs per sweep)
RESTARTS = 2  # random starts besides the bound's plan and the largest one (8 found nothing better on N = 4, 8)

Options = Callable[[np.ndarray, int], np.ndarray]  # (plan, client) -> (S, L) bool candidate sets


def progress_search(
    problem: Problem, start: np.ndarray, consts: ProgressConstants, restarts: int = RESTARTS, seed: int = 0,
    seconds: float | None = None,
) -> np.ndarray:
    """The plan (N, L bool) of least Phi that coordinate descent reaches from `start`, the largest
    feasible plan and `restarts` random feasible plans (seeded), within `seconds` if given."""
    deadline = None if seconds is None else time.perf_counter() + seconds
    sets = _all_sets(problem)
    rng = np.random.default_rng(seed)
    start = np.asarray(start, bool)
    starts = [start]
    if sets is not None:
        starts.append(np.array([s[np.argmax(s.sum(1))] for s in sets]))
        starts += [np.array([s[rng.integers(len(s))] for s in sets]) for _ in range(restarts)]
    options = (lambda A, n: sets[n]) if sets is not None else (lambda A, n: _neighbours(problem, A, n))
    pairs = sets is not None and problem.n_clients <= MAX_PAIR_CLIENTS
    best, best_value = start, float(one_round_change(start, consts))
    for A in starts:
        if _admissible(problem, A[None])[0]:
            end = _descend(problem, options, A, consts, pairs, deadline)
            value = float(one_round_change(end, consts))
            if value < best_value:
                best, best_value = end, value
        if deadline is not None and time.perf_counter() > deadline:
            break
    return best


def _all_sets(problem: Problem) -> list[np.ndarray] | None:
    if problem.n_blocks > MAX_ENUMERATED_BLOCKS:
        return None
    try:
        return feasible_sets(problem)
    except TooLargeForExact:
        return None


def _neighbours(problem: Problem, A: np.ndarray, n: int) -> np.ndarray:
    """Client n's current set and every feasible set one block away from it."""
    flips = A[n][None, :] ^ np.eye(problem.n_blocks, dtype=bool)
    options = np.vstack([A[n][None, :], flips])
    ok = options.any(1) & ~np.any(options & ~problem.fits[n], axis=1)
    ok &= options @ problem.mem.delta <= problem.capacity[n] * (1 + 1e-12) + 1e-9
    return options[ok]


def _descend(problem: Problem, options: Options, A: np.ndarray, consts: ProgressConstants, pairs: bool,
             deadline: float | None) -> np.ndarray:
    """Single-client moves until none helps, then pair moves (a block handed from one client to
    another is a pair move when coverage is required), until neither helps."""
    A, current = A.copy(), float(one_round_change(A, consts))
    for _ in range(MAX_SWEEPS):
        A, current, moved = _sweep(problem, options, A, current, consts, [(n,) for n in range(len(A))], deadline)
        if not moved and pairs:
            A, current, moved = _sweep(problem, options, A, current, consts, _pairs(options, A), deadline)
        if not moved or (deadline is not None and time.perf_counter() > deadline):
            break
    return A


def _sweep(problem, options: Options, A, current, consts, groups, deadline):
    moved = False
    for group in groups:
        if deadline is not None and time.perf_counter() > deadline:
            break
        choices = [options(A, n) for n in group]
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


def _pairs(options: Options, A: np.ndarray) -> list[tuple[int, int]]:
    """Client pairs whose joint choices are few enough to evaluate at once."""
    sizes = [len(options(A, n)) for n in range(len(A))]
    N = len(A)
    return [(n, m) for n in range(N) for m in range(n + 1, N) if sizes[n] * sizes[m] <= MAX_PAIR_CHOICES]


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
