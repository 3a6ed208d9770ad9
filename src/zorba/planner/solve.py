"""Solvers for the lexicographic planning problem (problem.py): brute force (the oracle), exact MILP,
the scalable heuristic, the epsilon-constraint Pareto sweep, and windows for uncoverable budgets.

All take the same arguments: bound constants, memory model, per-client budgets (bytes), an optional
eps on total memory, and tol, the relative slack of the lexicographic first stage.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from zorba.planner.bound import BoundConstants, bound_batch
from zorba.planner.heuristic import heuristic_plan
from zorba.planner.memory_model import MemoryModel
from zorba.planner.milp import TooLargeForExact, solve_milp
from zorba.planner.problem import CoverageInfeasible, Plan, PlanInfeasible, Problem
from zorba.planner.window import Schedule, window_schedule

__all__ = [
    "CoverageInfeasible",
    "ParetoPoint",
    "Plan",
    "PlanInfeasible",
    "Schedule",
    "brute_force",
    "pareto_front",
    "plan_schedule",
    "solve_exact",
    "solve_heuristic",
]

DEFAULT_TOL = 1e-3
BRUTE_FORCE_MAX_CELLS = 16  # N * L


def _problem(consts, mem, budgets, eps, tol, required, allowed, client_ids) -> Problem:
    problem = Problem(consts, mem, np.asarray(budgets, float), eps, tol, required, allowed, client_ids)
    problem.check_budgets()
    return problem


# --- brute force ----------------------------------------------------------------------------------------
def brute_force(
    consts: BoundConstants,
    mem: MemoryModel,
    budgets: Sequence[float] | np.ndarray,
    eps: float | None = None,
    tol: float = DEFAULT_TOL,
    *,
    required: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
    client_ids: Sequence[int] | None = None,
) -> Plan:
    """Every plan, evaluated exactly: the oracle the other solvers are tested against (N * L <= 16)."""
    problem = _problem(consts, mem, budgets, eps, tol, required, allowed, client_ids)
    return _brute_force(problem)


def _brute_force(problem: Problem) -> Plan:
    if problem.n_clients * problem.n_blocks > BRUTE_FORCE_MAX_CELLS:
        raise ValueError(f"brute force is for N * L <= {BRUTE_FORCE_MAX_CELLS}")
    started = time.perf_counter()
    As = _all_feasible_plans(problem)
    values = bound_batch(As, problem.consts, problem.must_cover)
    if not np.isfinite(values).any():
        raise CoverageInfeasible("no plan within the budgets covers every required block")
    memory = problem.mem.client_memory(As).sum(-1)
    k = lexicographic_choice(values, memory, problem.tol)
    return problem.make_plan(As[k], "brute-force", time.perf_counter() - started, float(values.min()))


def _all_feasible_plans(problem: Problem) -> np.ndarray:
    """(P, N, L): the product of every client's feasible non-empty block sets, within eps."""
    L = problem.n_blocks
    subsets = np.array(list(itertools.product([False, True], repeat=L))[1:], bool)
    choices = []
    for n in range(problem.n_clients):
        ok = ~np.any(subsets & ~problem.fits[n], axis=1)
        ok &= subsets @ problem.mem.delta <= problem.capacity[n] * (1 + 1e-12) + 1e-9
        choices.append(subsets[ok])
    index = np.array(list(itertools.product(*[range(len(c)) for c in choices])))
    As = np.stack([choices[n][index[:, n]] for n in range(problem.n_clients)], axis=1)
    within = (As @ problem.mem.delta).sum(-1) <= problem.eps_capacity * (1 + 1e-12) + 1e-9
    if not within.any():
        raise PlanInfeasible("no plan fits the eps limit on total memory")
    return As[within]


def lexicographic_choice(values: np.ndarray, memory: np.ndarray, tol: float) -> int:
    """Least memory among values <= (1 + tol) * best; then least value; then first."""
    best = values.min()
    near = values <= (1 + tol) * best if np.isfinite(tol) else np.isfinite(values)
    candidates = np.flatnonzero(near)
    order = np.lexsort((values[candidates], memory[candidates]))
    return int(candidates[order[0]])


# --- exact MILP -------------------------------------------------------------------------------------------
def solve_exact(
    consts: BoundConstants,
    mem: MemoryModel,
    budgets: Sequence[float] | np.ndarray,
    eps: float | None = None,
    tol: float = DEFAULT_TOL,
    *,
    required: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
    client_ids: Sequence[int] | None = None,
    time_limit: float | None = None,
) -> Plan:
    """Exact lexicographic optimum by MILP (milp.py). With a time limit that cuts HiGHS short the
    solver name says 'milp (time limit)' and the plan is only the best found."""
    problem = _problem(consts, mem, budgets, eps, tol, required, allowed, client_ids)
    return _exact(problem, time_limit)


def _exact(problem: Problem, time_limit: float | None = None) -> Plan:
    started = time.perf_counter()
    A, best, proven = solve_milp(problem, time_limit)
    name = "milp" if proven else "milp (time limit)"
    return problem.make_plan(A, name, time.perf_counter() - started, best)


# --- heuristic --------------------------------------------------------------------------------------------
def solve_heuristic(
    consts: BoundConstants,
    mem: MemoryModel,
    budgets: Sequence[float] | np.ndarray,
    eps: float | None = None,
    tol: float = DEFAULT_TOL,
    *,
    required: np.ndarray | None = None,
    allowed: np.ndarray | None = None,
    client_ids: Sequence[int] | None = None,
    time_limit: float = 0.8,
    seed: int = 0,
    init: np.ndarray | None = None,
) -> Plan:
    """Construction plus local search (heuristic.py), for thousands of clients; `init` warm-starts
    from a previous plan. best_bound is the J it reached before trading slack for memory."""
    problem = _problem(consts, mem, budgets, eps, tol, required, allowed, client_ids)
    return _heuristic(problem, time_limit, seed, init)


def _heuristic(
    problem: Problem, time_limit: float = 0.8, seed: int = 0, init: np.ndarray | None = None
) -> Plan:
    started = time.perf_counter()
    A, best = heuristic_plan(problem, time_limit, seed, init)
    return problem.make_plan(A, "heuristic", time.perf_counter() - started, best)


# --- choosing a method, windows, Pareto front -----------------------------------------------------------
def solver_for(
    problem: Problem,
    exact_max_cells: int,
    time_limit: float = 0.8,
    seed: int = 0,
    init: np.ndarray | None = None,
    exact_time_limit: float | None = 30.0,
) -> Callable[[Problem], Plan]:
    """Exact when the instance is small enough (N * L cells) and the MILP applies, else the heuristic
    (warm-started from `init` on the full problem). An exact solve cut short by its time limit is
    compared with the heuristic and the better plan kept."""

    def heuristic(sub: Problem) -> Plan:
        return _heuristic(sub, time_limit, seed, init if sub is problem else None)

    def exact_or_best(sub: Problem) -> Plan:
        try:
            plan = _exact(sub, exact_time_limit)
        except TooLargeForExact:
            return heuristic(sub)
        if plan.solver == "milp":
            return plan
        other = heuristic(sub)
        return plan if plan.bound <= other.bound else other

    small = problem.n_clients * problem.n_blocks <= exact_max_cells
    if small and (problem.consts.equal_weights(problem.n_clients) or problem.n_clients <= 8):
        return exact_or_best
    return heuristic


def plan_schedule(problem: Problem, solve_round: Callable[[Problem], Plan]) -> Schedule:
    """One plan if one can cover every required block, else a window of plans (window.py)."""
    started = time.perf_counter()
    problem.check_budgets()
    try:
        plan = solve_round(problem)
        return Schedule([plan], plan.bound, time.perf_counter() - started)
    except CoverageInfeasible:
        return window_schedule(problem, solve_round, started)


class ParetoPoint(NamedTuple):
    eps: float
    total_memory: float
    bound: float
    A: np.ndarray


def pareto_front(
    consts: BoundConstants,
    mem: MemoryModel,
    budgets: Sequence[float] | np.ndarray,
    n_points: int = 8,
    tol: float = DEFAULT_TOL,
    *,
    method: str = "auto",
    exact_max_cells: int = 24,
    time_limit: float = 0.8,
) -> list[ParetoPoint]:
    """Epsilon-constraint sweep: eps from the least total memory of any covering plan to the memory
    of the unconstrained lexicographic optimum; one lexicographic solve per eps."""
    problem = _problem(consts, mem, budgets, None, tol, None, None, None)
    solve = {"exact": _exact, "heuristic": lambda p: _heuristic(p, time_limit)}.get(method)
    solve = solve or solver_for(problem, exact_max_cells, time_limit)
    top = solve(problem)
    bottom = solve(problem.with_eps(None, tol=np.inf))  # J <= inf: just the least memory
    points = []
    for eps in np.linspace(bottom.total_memory, top.total_memory, n_points):
        plan = solve(problem.with_eps(float(eps) * (1 + 1e-12)))
        points.append(ParetoPoint(float(eps), plan.total_memory, plan.bound, plan.A))
    return points
