"""The optimised ZorBA planner behind the runner's BlockPlanner interface.

Every round it plans for the clients present (dropouts simply are not planned), from constants
re-estimated from the scalars of the last rounds: exact MILP for small instances, the heuristic
(warm-started from the last plan) for large ones. When no single plan covers every block it keeps a
window of plans and draws one uniformly at random per round, which is the schedule Theorem 1 of
docs/theory.md analyses. Rows of interchangeable clients (same budget, memory and weight) are
reassigned each round, heavier rows to faster clients and randomly among equally fast ones: that
changes nothing in J or memory, but shortens the round and lets the covering sets rotate.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from zorba.planner.bound import BoundConstants
from zorba.planner.estimate import ScalarReport
from zorba.planner.memory_model import MemoryModel
from zorba.planner.problem import Problem
from zorba.planner.progress import ProgressConstants
from zorba.planner.progress_search import progress_search
from zorba.planner.solve import DEFAULT_TOL, Schedule, plan_schedule, solver_for
from zorba.plans import BlockPlanner

# Progress searches remembered (oldest dropped first): a repeated participant set and start plan
# (full participation: every round) reuses its search, and memory stays bounded over long runs.
SEARCHES_KEPT = 32


class ZorbaPlanner(BlockPlanner):
    name = "zorba"

    def __init__(
        self,
        block_sizes: Sequence[int] | np.ndarray,
        budgets: Sequence[float] | np.ndarray,
        mem: MemoryModel,
        consts: BoundConstants | None = None,
        exact_max_vars: int = 24,
        tol: float = DEFAULT_TOL,
        eps: float | None = None,
        seed: int = 0,
        history: int = 20,
        time_limit: float = 0.8,
        ridge: float = 1.0,
        exact_time_limit: float | None = 10.0,
        speed: Sequence[float] | None = None,
    ) -> None:
        self.block_sizes = np.asarray(block_sizes, float)
        self.budgets = np.asarray(budgets, float)
        self.mem, self.eps, self.tol, self.seed = mem, eps, tol, seed
        self.exact_max_vars, self.time_limit, self.ridge = exact_max_vars, time_limit, ridge
        self.exact_time_limit = exact_time_limit
        self.speed = np.ones(len(self.budgets)) if speed is None else np.asarray(speed, float)
        self.prior = consts if consts is not None else BoundConstants.from_block_sizes(self.block_sizes)
        self.consts = self.prior
        self.schedule: Schedule | None = None
        self.progress: ProgressConstants | None = None
        self._searched: dict[tuple, np.ndarray] = {}
        self._history: deque[list[ScalarReport]] = deque(maxlen=history)
        self._given: dict[int, dict[int, tuple[int, ...]]] = {}
        self._planned_for: tuple[int, ...] | None = None
        self._stale = True
        ids = list(range(len(self.budgets)))
        Problem(self.prior.subset(ids), mem, self.budgets, None, tol, client_ids=ids).check_budgets()

    # --- the BlockPlanner interface --------------------------------------------------------------
    def plan(self, round_idx: int, clients: Sequence[int]) -> dict[int, tuple[int, ...]]:
        ids = tuple(sorted({int(c) for c in clients}))
        if not ids:
            return {}
        if self._stale or ids != self._planned_for:
            self.schedule = self._solve(ids)
            self._planned_for, self._stale = ids, False
        rng = np.random.default_rng([self.seed, round_idx])
        A = self.schedule.plans[int(rng.integers(self.schedule.window))].A
        # With measured per-client constants (use_progress) clients are no longer interchangeable.
        rows = np.arange(len(ids)) if self.progress is not None else self._shuffled_rows(ids, A, rng)
        given = {cid: tuple(int(b) for b in np.flatnonzero(A[rows[i]])) for i, cid in enumerate(ids)}
        self._given = {r: g for r, g in self._given.items() if r > round_idx - 2}  # reports come next round
        self._given[round_idx] = given
        return given

    def observe(self, round_idx: int, reports: Mapping[int, Sequence[float]]) -> None:
        given = self._given.pop(round_idx, None)
        if given is None:
            return
        batch = [ScalarReport(c, given[c], np.asarray(s, float)) for c, s in reports.items() if c in given]
        self._history.append(batch)
        self.consts = self.prior.estimate_from_scalars(
            [r for b in self._history for r in b], ridge=self.ridge
        )
        self._stale = True

    def use_progress(self, consts: ProgressConstants) -> None:
        """Plan by the progress objective Phi (docs/theory.md section 14) from now on: the bound's
        plan is the start of a search on Phi under the same budgets and coverage (progress_search.py)."""
        self.progress, self._stale, self._searched = consts, True, {}

    # --- planning ----------------------------------------------------------------------------------
    def _solve(self, ids: tuple[int, ...]) -> Schedule:
        rows = list(ids)
        problem = Problem(
            self.consts.subset(rows),
            self.mem.subset(rows),
            self.budgets[rows],
            self.eps,
            self.tol,
            client_ids=ids,
        )
        coverable = problem.fits.any(axis=0)
        if not coverable.all():
            # The clients present this round (dropouts) cannot hold some block: plan the rest; that
            # block waits for a round in which a client that can hold it is back.
            problem = Problem(problem.consts, problem.mem, problem.budgets, self.eps, self.tol,
                              required=coverable, client_ids=ids)
        solve_round = solver_for(
            problem,
            self.exact_max_vars,
            self.time_limit,
            self.seed,
            self._warm_start(ids),
            self.exact_time_limit,
        )
        schedule = plan_schedule(problem, solve_round)
        if self.progress is None or schedule.window != 1:
            return schedule
        started, first = time.perf_counter(), schedule.plans[0]
        key = (ids, first.A.tobytes())  # the search is deterministic: same start, same end
        if key not in self._searched:
            if len(self._searched) >= SEARCHES_KEPT:  # with partial participation every round may differ
                self._searched.pop(next(iter(self._searched)))
            self._searched[key] = progress_search(problem, first.A, self.progress.subset(rows), seed=self.seed)
        A = self._searched[key]
        plan = problem.make_plan(A, f"{first.solver}+progress", first.seconds + time.perf_counter() - started)
        return Schedule([plan], plan.bound, schedule.seconds + time.perf_counter() - started)

    def _warm_start(self, ids: tuple[int, ...]) -> np.ndarray | None:
        if self.schedule is None or self.schedule.window != 1 or ids != self._planned_for:
            return None
        return self.schedule.plans[0].A

    def _shuffled_rows(self, ids: tuple[int, ...], A: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Row of the plan each client takes. Clients with the same budget, memory and weight are
        interchangeable (J and memory do not change): the faster ones take the rows with more active
        parameters (perturbing and updating cost time in proportion), equally fast ones in random
        order, so covering sets rotate from round to round."""
        rows = np.arange(len(ids))
        fixed = self.mem.subset(list(ids)).fixed(len(ids))
        weights = self.prior.subset(list(ids)).client_weights(len(ids))
        active = A @ self.block_sizes
        classes: dict[tuple, list[int]] = {}
        for i, cid in enumerate(ids):
            classes.setdefault((self.budgets[cid], fixed[i], weights[i]), []).append(i)
        for members in classes.values():
            members = np.array(members)
            heavy_first = members[np.argsort(-active[members], kind="stable")]
            speeds = self.speed[np.array(ids)[members]]
            fast_first = members[np.lexsort((rng.random(len(members)), -speeds))]
            rows[fast_first] = heavy_first
        return rows


def make_zorba_planner(cfg, lm, profiles, mem: MemoryModel, effective_sizes=None, block_smooth=None) -> ZorbaPlanner:
    """The runner's hook (zorba.runner.make_planner): the clients' budgets and speeds from their
    profiles, the run's memory model, default constants at the run's lr, K, q, T and estimator;
    `effective_sizes` (planner/curvature.py) replace the block sizes in the noise terms and
    `block_smooth` (L_l, Theorem 3) the global smoothness per block."""
    block_sizes = np.array([b.numel for b in lm.blocks], float)
    consts = BoundConstants.from_block_sizes(
        block_sizes,
        lr=cfg.lr,
        local_steps=cfg.local_steps,
        perturbations=cfg.q,
        rounds=cfg.rounds,
        estimator=cfg.dist,
        effective_sizes=effective_sizes,
        block_smooth=block_smooth,
    )
    budgets = [p.memory_bytes for p in profiles]
    speed = [p.speed for p in profiles]
    return ZorbaPlanner(block_sizes, budgets, mem, consts, seed=cfg.seed, speed=speed)
