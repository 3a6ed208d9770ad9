"""Exact lexicographic solution by mixed-integer linear programming (scipy.optimize.milp / HiGHS).

Two one-hot choices make J linear (docs/theory.md, "Exact method"):
- per client, its block set: x[n, S] = 1 for one feasible set S (within budget, non-empty). Then
  A[n, l] = sum_{S containing l} x[n, S], and everything that depends on the client's whole set (its
  gradient mass D_n, its dimension d_n) is a constant of S: the client's noise on block l,
  sigma2[n, l] A[n, l] = sum_S x[n, S] sigma2_l(S), is linear in x.
- per block, its covering pattern: e[l, k] = 1 for coverage count k (equal client weights; then
  1/c_l and 1/c_l^2 are constants of k), or e[l, C] = 1 for covering set C (unequal weights; the
  weights p_n / P_C are constants of C; exponential in N, so only for few clients).
The remaining products (pattern one-hot x client term) are disaggregated: share[j, n] in [0, e[j]]
carries client n's term on block l when pattern j is the block's pattern, and the shares over j must
cover the term. In an integer solution only the true pattern's share is non-zero and equals the
term, so the objective is exactly J - constant. Stage 1 minimises it; stage 2 minimises total memory
with it bounded by (1 + tol) J* (elastic, see minimise_memory).
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from zorba.planner.bound import per_round_terms
from zorba.planner.problem import CoverageInfeasible, Problem


class TooLargeForExact(ValueError):
    """The instance exceeds what the exact formulation enumerates; use the heuristic."""


MAX_SUBSET_CLIENTS = 12  # unequal weights: 2^N covering sets per block
MAX_SET_VARIABLES = 200_000  # feasible block sets over all clients
# HiGHS stops at a 1e-6 absolute gap by default; these make "optimal" mean optimal to float precision.
_HIGHS_EXACT = {"mip_rel_gap": 0.0, "mip_abs_gap": 0.0, "mip_feasibility_tolerance": 1e-9}


@dataclass(frozen=True)
class Pattern:
    """One way block l can be covered: per-client coefficients of V and Dr, and the bias constant."""

    block: int
    var_coef: np.ndarray  # (N,) (p_n / P)^2, 0 outside the covering set
    drift_coef: np.ndarray  # (N,) p_n / P
    bias: float  # 2 zeta_l^2 (1 - P) / P
    count: int | None  # coverage count (equal weights) or None (covering set)
    members: tuple[int, ...]  # the covering set (unequal weights)

    def includes(self, n: int) -> bool:
        return self.count is not None or n in self.members


class _Columns:
    def __init__(self) -> None:
        self.ub: list[np.ndarray] = []
        self.integer: list[np.ndarray] = []
        self.size = 0

    def add(self, shape: tuple[int, ...], ub, integer: bool) -> np.ndarray:
        count = int(np.prod(shape))
        idx = np.arange(self.size, self.size + count).reshape(shape)
        self.size += count
        self.ub.append(np.broadcast_to(np.asarray(ub, float), shape).reshape(-1).copy())
        self.integer.append(np.full(count, int(integer)))
        return idx

    def bounds(self, extra: int = 0) -> Bounds:
        ub = np.concatenate(self.ub + [np.full(extra, np.inf)])
        return Bounds(np.zeros(len(ub)), ub)


class _Rows:
    """Sparse rows lo <= sum(vals * x[cols]) <= hi."""

    def __init__(self) -> None:
        self.r: list[np.ndarray] = []
        self.c: list[np.ndarray] = []
        self.v: list[np.ndarray] = []
        self.lo: list[float] = []
        self.hi: list[float] = []

    def add(self, cols, vals, lo: float, hi: float) -> None:
        cols = np.asarray(cols, int).reshape(-1)
        self.r.append(np.full(len(cols), len(self.lo)))
        self.c.append(cols)
        self.v.append(np.broadcast_to(np.asarray(vals, float), cols.shape).reshape(-1))
        self.lo.append(lo)
        self.hi.append(hi)

    def constraint(self, n_cols: int) -> LinearConstraint:
        data = (np.concatenate(self.v), (np.concatenate(self.r), np.concatenate(self.c)))
        matrix = coo_array(data, shape=(len(self.lo), n_cols)).tocsr()
        return LinearConstraint(matrix, np.array(self.lo), np.array(self.hi))


def feasible_sets(problem: Problem) -> list[np.ndarray]:
    """Per client, the (S_n, L) boolean matrix of its non-empty block sets within budget."""
    L = problem.n_blocks
    masks = (np.arange(1, 2**L)[:, None] >> np.arange(L)[None, :]) & 1 == 1
    cost = masks @ problem.mem.delta
    out, total = [], 0
    for n in range(problem.n_clients):
        ok = ~np.any(masks & ~problem.fits[n], axis=1) & (cost <= problem.capacity[n] * (1 + 1e-12) + 1e-9)
        out.append(masks[ok])
        total += int(ok.sum())
        if total > MAX_SET_VARIABLES:
            raise TooLargeForExact(
                f"too large for the exact MILP (over {MAX_SET_VARIABLES} feasible block sets); use solve_heuristic"
            )
    return out


class MilpModel:
    """The linear model; `minimise_bound` and `minimise_memory` are the two lexicographic stages."""

    def __init__(self, problem: Problem, time_limit: float | None = None) -> None:
        if problem.n_blocks > 20:
            raise TooLargeForExact(
                "the exact MILP enumerates block sets: at most 20 blocks; use solve_heuristic"
            )
        self.problem, self.time_limit, self.timed_out = problem, time_limit, False
        self.sets = feasible_sets(problem)
        self.patterns = self._patterns()
        self.cols, self.rows = _Columns(), _Rows()
        self.obj_unit = self._objective_unit()
        self._add_set_choice()
        self.e = self.cols.add((len(self.patterns),), 1.0, integer=True)
        self.objective_cols = [self.e]
        self.objective_coef = [np.array([pat.bias for pat in self.patterns]) / self.obj_unit]
        self._add_coverage_links()
        self._add_block_terms()
        if problem.eps is not None:
            self._add_eps()
        self._add_symmetry_breaking()

    def _objective_unit(self) -> float:
        """J - constant of the plan holding every block that fits: keeps coefficients near 1."""
        p = self.problem
        value = per_round_terms(p.fits[None].astype(float), p.consts).combined(p.consts, p.eta)[0]
        return float(value) if np.isfinite(value) and value > 0 else 1.0

    # --- patterns ---------------------------------------------------------------------------------
    def _patterns(self) -> list[Pattern]:
        p = self.problem
        equal = p.consts.equal_weights(p.n_clients)
        patterns: list[Pattern] = []
        for block in np.flatnonzero(p.fits.any(axis=0)):
            holders = np.flatnonzero(p.fits[:, block])
            patterns += (
                self._count_patterns(int(block), len(holders))
                if equal
                else self._subset_patterns(int(block), holders)
            )
        return patterns

    def _count_patterns(self, block: int, n_holders: int) -> list[Pattern]:
        p = self.problem
        N, zeta2 = p.n_clients, p.consts.zeta2[block]
        out = [] if p.must_cover[block] else [Pattern(block, np.zeros(N), np.zeros(N), 0.0, 0, ())]
        for k in range(1, n_holders + 1):
            out.append(
                Pattern(block, np.full(N, 1.0 / k**2), np.full(N, 1.0 / k), 2 * zeta2 * (N - k) / k, k, ())
            )
        return out

    def _subset_patterns(self, block: int, holders: np.ndarray) -> list[Pattern]:
        p = self.problem
        if len(holders) > MAX_SUBSET_CLIENTS:
            raise TooLargeForExact(
                f"unequal client weights: the exact MILP enumerates covering sets, at most {MAX_SUBSET_CLIENTS} "
                f"clients per block ({len(holders)} here); use solve_heuristic"
            )
        w, zeta2 = p.weights, p.consts.zeta2[block]
        N = p.n_clients
        out = [] if p.must_cover[block] else [Pattern(block, np.zeros(N), np.zeros(N), 0.0, None, ())]
        for size in range(1, len(holders) + 1):
            for members in itertools.combinations(holders.tolist(), size):
                inside = np.zeros(N, bool)
                inside[list(members)] = True
                mass, missing = w[inside].sum(), w[~inside].sum()
                share = np.where(inside, w / mass, 0.0)
                out.append(Pattern(block, share**2, share, 2 * zeta2 * missing / mass, None, members))
        return out

    # --- per-client set choice ---------------------------------------------------------------------
    def _add_set_choice(self) -> None:
        """x[n, S] one-hot; A[n, l] = sum over S containing l (A continuous: x makes it integral)."""
        p = self.problem
        self.A = self.cols.add((p.n_clients, p.n_blocks), p.fits.astype(float), integer=False)
        self.x = [self.cols.add((len(sets),), 1.0, integer=True) for sets in self.sets]
        for n, sets in enumerate(self.sets):
            self.rows.add(self.x[n], 1.0, 1.0, 1.0)
            for blk in np.flatnonzero(p.fits[n]):
                holding = self.x[n][sets[:, blk]]
                self.rows.add(
                    np.append(holding, self.A[n, blk]), np.append(np.ones(len(holding)), -1.0), 0.0, 0.0
                )

    def _set_constants(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per feasible set of client n: sigma2_l(S) for every l (S_n, L) and sigma2(S) (S_n,)."""
        c = self.problem.consts
        sets = self.sets[n].astype(float)
        D, dn = sets @ c.G2, sets @ c.effective_sizes  # the noise dimension is the effective size
        per_block = (1 + c.kappa / c.perturbations) * c.G2[None, :] + c.effective_sizes[None, :] * D[
            :, None
        ] / c.perturbations
        return per_block, D * (1 + (dn + c.kappa) / c.perturbations)

    # --- coverage patterns and the block terms -----------------------------------------------------
    def _add_coverage_links(self) -> None:
        p = self.problem
        for blk in range(p.n_blocks):
            js = [j for j, pat in enumerate(self.patterns) if pat.block == blk]
            if not js:
                continue
            self.rows.add(self.e[js], 1.0, 1.0, 1.0)
            holders = np.flatnonzero(p.fits[:, blk])
            if self.patterns[js[0]].count is not None:  # sum_n A[n, l] = sum_k k e[l, k]
                counts = [self.patterns[j].count for j in js]
                self.rows.add(
                    np.concatenate([self.A[holders, blk], self.e[js]]),
                    [1.0] * len(holders) + [-k for k in counts],
                    0,
                    0,
                )
            else:  # A[n, l] = sum of e over the covering sets containing n
                for n in holders:
                    inside = [j for j in js if n in self.patterns[j].members]
                    self.rows.add(
                        np.concatenate([[self.A[n, blk]], self.e[inside]]), [1.0] + [-1.0] * len(inside), 0, 0
                    )

    def _add_block_terms(self) -> None:
        p = self.problem
        by_block: dict[int, list[int]] = {}
        for j, pat in enumerate(self.patterns):
            if pat.count != 0 and (pat.count is not None or pat.members):
                by_block.setdefault(pat.block, []).append(j)
        constants = [self._set_constants(n) for n in range(p.n_clients)]
        c, a = p.consts.drift_weights  # per-block smoothness (bound.py); c = 1, a = 0 under A1
        for blk, js in by_block.items():
            mass: dict[int, list[np.ndarray]] = {j: [] for j in js}
            for n in np.flatnonzero(p.fits[:, blk]):
                holding = self.sets[n][:, blk]
                per_block, whole = constants[n]
                var_term = p.alpha * p.consts.noise_weights[blk] * per_block[holding, blk]
                drift_term = p.beta * (c * whole[holding] + a[blk] * per_block[holding, blk])
                for j, z in self._add_split(js, n, holding, var_term, drift_term):
                    mass[j].append(z)
            for j in js:  # pattern k is held by exactly k clients: the masses add up to k e[j]
                pat = self.patterns[j]
                if pat.count is not None:
                    zs = np.concatenate(mass[j])
                    self.rows.add(np.append(zs, self.e[j]), np.append(np.ones(len(zs)), -pat.count), 0.0, 0.0)

    def _add_split(self, js, n: int, holding: np.ndarray, var_term: np.ndarray, drift_term: np.ndarray):
        """z[j, S] = e[j] x[n, S] for the sets S that hold the block: sum_j z[j, S] = x[n, S], and per
        pattern sum_S z[j, S] <= e[j] (= e[j] for a covering set containing n), while over all clients
        a count pattern k carries mass k e[j] (see the caller). In integer solutions z is exactly the
        product, so sum z[j, S] (var_coef_j var_term(S) + drift_coef_j drift_term(S)) is the client's
        part of J on this block; the mass rows keep the LP relaxation from spreading a block's clients
        over cheap large-coverage patterns it cannot have. Returns (pattern, its z columns) pairs."""
        mine = [j for j in js if self.patterns[j].includes(n)]
        sets = self.x[n][holding]
        z = self.cols.add((len(mine), len(sets)), 1.0, integer=False)
        for i, s in enumerate(sets):
            self.rows.add(np.append(z[:, i], s), np.append(np.ones(len(mine)), -1.0), 0.0, 0.0)
        for k, j in enumerate(mine):
            exact = self.patterns[j].count is None  # n is in this covering set: it holds the block iff e[j]
            self.rows.add(
                np.append(z[k], self.e[j]),
                np.append(np.ones(len(sets)), -1.0),
                0.0 if exact else -np.inf,
                0.0,
            )
        var_coef = np.array([self.patterns[j].var_coef[n] for j in mine])
        drift_coef = np.array([self.patterns[j].drift_coef[n] for j in mine])
        cost = (
            var_coef[:, None] * var_term[None, :] + drift_coef[:, None] * drift_term[None, :]
        ) / self.obj_unit
        self.objective_cols.append(z.reshape(-1))
        self.objective_coef.append(cost.reshape(-1))
        return list(zip(mine, z, strict=True))

    # --- memory -------------------------------------------------------------------------------------
    def _memory_coefficients(self) -> list[np.ndarray]:
        delta = self.problem.mem.delta / max(float(self.problem.mem.delta.max()), 1.0)
        return [sets @ delta for sets in self.sets]

    def _add_eps(self) -> None:
        unit = max(float(self.problem.mem.delta.max()), 1.0)
        self.rows.add(
            np.concatenate(self.x),
            np.concatenate(self._memory_coefficients()),
            -np.inf,
            self.problem.eps_capacity / unit,
        )

    def _add_symmetry_breaking(self) -> None:
        """Interchangeable clients (same budget room, allowed blocks and weight): any permutation of
        their rows is as good, so ask their chosen set indices to be non-increasing."""
        p = self.problem
        groups: dict[tuple, list[int]] = {}
        for n in range(p.n_clients):
            key = (round(float(p.capacity[n]), 6), p.fits[n].tobytes(), round(float(p.weights[n]), 15))
            groups.setdefault(key, []).append(n)
        for members in groups.values():
            for a, b in itertools.pairwise(members):  # same sets, same order: index = position
                rank = np.arange(len(self.sets[a]), dtype=float)
                self.rows.add(
                    np.concatenate([self.x[a], self.x[b]]), np.concatenate([rank, -rank]), 0.0, np.inf
                )

    # --- the two stages -------------------------------------------------------------------------------
    def _objective_parts(self) -> tuple[np.ndarray, np.ndarray]:
        """Columns and coefficients of J - constant, in units of obj_unit."""
        return np.concatenate(self.objective_cols), np.concatenate(self.objective_coef)

    def _solve(self, cost: np.ndarray, extra: _Rows | None = None, extra_cols: int = 0) -> np.ndarray:
        n_cols = self.cols.size + extra_cols
        constraints = [self.rows.constraint(n_cols)] + ([extra.constraint(n_cols)] if extra else [])
        integrality = np.concatenate(self.cols.integer + [np.zeros(extra_cols, int)])
        options = dict(_HIGHS_EXACT)
        if self.time_limit is not None:
            options["time_limit"] = float(self.time_limit)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # scipy warns that it hands the options to HiGHS
            res = milp(
                cost,
                integrality=integrality,
                bounds=self.cols.bounds(extra_cols),
                constraints=constraints,
                options=options,
            )
        if res.x is None:
            eps = "" if self.problem.eps is None else " and the eps limit"
            raise CoverageInfeasible(
                f"no plan within the budgets{eps} covers every required block ({res.message})"
            )
        self.timed_out |= res.status != 0
        return np.asarray(res.x[self.A] > 0.5)

    def minimise_bound(self) -> np.ndarray:
        cost = np.zeros(self.cols.size)
        idx, coef = self._objective_parts()
        cost[idx] = coef
        return self._solve(cost)

    def minimise_memory(self, max_bound: float) -> np.ndarray:
        """Least memory with J <= max_bound. The limit is elastic (a slack priced above every memory
        saving together) so that any plan is feasible and HiGHS has incumbents at once; a plan that
        still uses slack is caught by the caller's exact check."""
        memory = np.concatenate(self._memory_coefficients())
        cost = np.zeros(self.cols.size + 1)
        cost[np.concatenate(self.x)] = memory
        if not np.isfinite(max_bound):
            return self._solve(cost[:-1])
        slack = self.cols.size
        cost[slack] = 1e6 * (1.0 + memory.max() * self.problem.n_clients)
        idx, coef = self._objective_parts()
        extra = _Rows()
        extra.add(
            np.append(idx, slack),
            np.append(coef, -1.0),
            -np.inf,
            (max_bound - self.problem.constant) / self.obj_unit,
        )
        return self._solve(cost, extra, extra_cols=1)


def solve_milp(problem: Problem, time_limit: float | None = None) -> tuple[np.ndarray, float, bool]:
    """(A, J*, proven) by the two lexicographic stages; proven is False if a time limit cut HiGHS short."""
    model = MilpModel(problem, time_limit)
    best_A = model.minimise_bound()
    best = problem.evaluate(best_A)
    limit = np.inf if problem.tol == np.inf else (1 + problem.tol) * best
    chosen = model.minimise_memory(limit)
    if problem.evaluate(chosen) > limit * (1 + 1e-9):
        chosen = best_A  # the solver's tolerances let a slightly too weak plan through
    return chosen, best, not model.timed_out
