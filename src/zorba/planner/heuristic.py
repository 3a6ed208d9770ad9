"""Scalable heuristic: a coverage-balancing construction, then local search with exact incremental
evaluation of J (docs/theory.md, "Heuristic").

1. Block count: every client takes k_n = min(k, k_max_n) blocks, k_max_n what its budget fits; the
   common k is the one whose cyclic (coverage-equalising) plan has the least J.
2. Assignment: one holder per required block first (packing.py), then clients, tightest budget first,
   take the k_n blocks furthest below a coverage target (sqrt(cost / bytes), coverage_targets).
3. Repair: a required block nobody holds goes to the roomiest client able to hold it.
4. Local search over single-client moves (drop a block, add one, swap one for another), each
   evaluated exactly in O(L^2) from per-block sums, until no move improves J or time runs out; then
   exchanges of two blocks' covering sets (small N * L), and with unequal client weights exchanges
   of whole block sets between two clients, each followed by more local search.
5. Iterated local search while time is left: restarts from other block counts and kicks of the
   best plan; the best local optimum wins.
6. Lexicographic memory phase: moves that save memory while J stays within (1 + tol) of the best J.
"""

from __future__ import annotations

import itertools
import time

import numpy as np

from zorba.planner.bound import per_round_terms
from zorba.planner.moves import SearchState
from zorba.planner.packing import pack_blocks
from zorba.planner.problem import CoverageInfeasible, PlanInfeasible, Problem


# --- construction ------------------------------------------------------------------------------------
def max_block_counts(problem: Problem) -> np.ndarray:
    """k_max_n: how many allowed blocks fit client n's budget, cheapest first."""
    cost = np.sort(np.where(problem.fits, problem.mem.delta[None, :], np.inf), axis=1)
    within = np.cumsum(cost, axis=1) <= problem.capacity[:, None] * (1 + 1e-12) + 1e-9
    return np.maximum(within.sum(1), 1)


def best_common_count(problem: Problem, k_max: np.ndarray) -> int:
    """The k whose cyclic plan (client n takes k_n consecutive blocks after its predecessor's) has the
    least J: a cheap one-dimensional scan over the trade-off between coverage and per-client noise."""
    N, L = problem.n_clients, problem.n_blocks
    best_k, best_value = int(k_max.max()), np.inf
    for k in range(1, int(k_max.max()) + 1):
        counts = np.minimum(k, k_max)
        start = np.cumsum(counts) - counts
        cols = (start[:, None] + np.arange(L)[None, :]) % L
        A = np.zeros((N, L), bool)
        take = np.arange(L)[None, :] < counts[:, None]
        A[np.repeat(np.arange(N), L)[take.ravel()], cols.ravel()[take.ravel()]] = True
        A &= problem.fits
        value = per_round_terms(A[None], problem.consts).combined(problem.consts, problem.eta)[0]
        if np.all(A.any(0) | ~problem.must_cover) and value < best_value:
            best_k, best_value = k, value
    return best_k


def cover_once(problem: Problem, seed: int = 0, jitter: bool = False) -> np.ndarray:
    """Every required block given to one client (packing.py), so the plan starts out covering
    everything whenever the packer finds a way; empty if it does not (repair then tries)."""
    A = np.zeros((problem.n_clients, problem.n_blocks), bool)
    blocks = np.flatnonzero(problem.must_cover)
    holder = pack_blocks(blocks, problem.mem.delta, problem.fits, problem.capacity, seed, jitter_only=jitter)
    if holder is not None:
        A[holder[blocks], blocks] = True
    return A


def coverage_targets(problem: Problem, counts: np.ndarray) -> np.ndarray:
    """Relative coverage each block deserves. With equal weights block l costs about
    a_l / c_l, a_l = 2 zeta_l^2 N + alpha sigma2_l (sigma2_l at the average active mass), and
    coverage c_l costs c_l delta_l bytes; minimising sum a_l / c_l for a memory total gives
    c_l proportional to sqrt(a_l / delta_l)."""
    c = problem.consts
    mean_mass = float(np.mean(counts)) / problem.n_blocks * c.G2.sum()
    sigma2 = (1 + c.kappa / c.perturbations) * c.G2 + c.effective_sizes * mean_mass / c.perturbations
    a = 2 * c.zeta2 * problem.n_clients + problem.alpha * c.noise_weights * sigma2
    return np.sqrt(np.maximum(a, 1e-300) / np.maximum(problem.mem.delta, 1e-300))


def fill_least_covered(problem: Problem, A: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Tightest budgets first, each client tops up to counts[n] blocks with the blocks furthest below
    their coverage target that still fit."""
    L = problem.n_blocks
    A = A.copy()
    delta, w = problem.mem.delta, problem.weights
    target = coverage_targets(problem, counts)
    cover = w @ A
    for n in np.argsort(problem.capacity, kind="stable"):
        room, taken = problem.capacity[n] - delta[A[n]].sum(), int(A[n].sum())
        order = np.lexsort(((np.arange(L) - n) % L, cover / target))  # ties rotate with n
        for blk in order:
            if taken >= counts[n]:
                break
            if not A[n, blk] and problem.fits[n, blk] and delta[blk] <= room * (1 + 1e-12) + 1e-9:
                A[n, blk], room, taken = True, room - delta[blk], taken + 1
                cover[blk] += w[n]
    return A


def cover_missing_blocks(state: SearchState) -> None:
    """Give each uncovered required block to the roomiest client that can make room for it by
    dropping blocks others also cover."""
    for blk in np.flatnonzero(state.required & (state.count == 0)):
        candidates = np.flatnonzero(state.fits[:, blk])
        for n in candidates[np.argsort(-state.cap[candidates], kind="stable")]:
            new = state.A[n].copy()
            spare = new & (state.count >= 2)
            for b in np.flatnonzero(spare)[np.argsort(-state.delta[spare], kind="stable")]:
                if state.delta[new].sum() + state.delta[blk] <= state.cap[n] * (1 + 1e-12) + 1e-9:
                    break
                new[b] = False
            if state.delta[new].sum() + state.delta[blk] <= state.cap[n] * (1 + 1e-12) + 1e-9:
                new[blk] = True
                state.set_client(n, new)
                break
        else:
            raise CoverageInfeasible(f"the heuristic found no client that can make room for block {blk}")
    state.recompute()


# --- search -------------------------------------------------------------------------------------------
def local_search(
    state: SearchState, mode: str, deadline: float, rng: np.random.Generator, limit: float = np.inf
) -> None:
    """Passes over the clients in random order, applying each client's best move, until a pass
    changes nothing or the deadline passes."""
    while time.perf_counter() < deadline:
        moved = False
        for n in rng.permutation(state.problem.n_clients):
            move = state.best_move(int(n), mode, limit)
            if move is not None:
                state.apply(move)
                moved = True
            if time.perf_counter() >= deadline:
                break
        state.recompute()
        if not moved:
            return


def exchange_pass(state: SearchState, deadline: float, rng: np.random.Generator, sample: int = 16) -> bool:
    """With unequal client weights the same sets on other rows give another J, which no single-client
    move reaches: try swapping whole block sets between pairs of clients (exact, apply and undo)."""
    N, improved = state.problem.n_clients, False
    for n in rng.permutation(N):
        others = np.arange(N) if N <= sample else rng.choice(N, sample, replace=False)
        for m in others:
            if time.perf_counter() >= deadline:
                return improved
            if m == n or np.array_equal(state.A[n], state.A[m]) or not _can_exchange(state, n, m):
                continue
            before, row_n, row_m = state.value, state.A[n].copy(), state.A[m].copy()
            state.set_client(int(n), row_m)
            state.set_client(int(m), row_n)
            after = state.objective()
            if after < before - 1e-12 * max(1.0, abs(before)):
                state.value, improved = after, True
            else:
                state.set_client(int(n), row_n)
                state.set_client(int(m), row_m)
    state.recompute()
    return improved


def column_swap_pass(state: SearchState, deadline: float, max_cells: int = 4096) -> bool:
    """Exchange the covering sets of two blocks (every client holding one but not the other trades
    it): the move that hands a group of blocks from the big clients to the small ones, which no
    single-client move reaches. O(L^2) full evaluations, so only for modest N * L."""
    N, L = state.A.shape
    if N * L > max_cells:
        return False
    improved = False
    for a, b in itertools.combinations(range(L), 2):
        if time.perf_counter() >= deadline:
            break
        if np.array_equal(state.A[:, a], state.A[:, b]):
            continue
        before, old = state.value, state.A.copy()
        state.A[:, [a, b]] = state.A[:, [b, a]]
        state.recompute()
        feasible = not np.any(state.A & ~state.fits) and state.problem.feasible(state.A)
        if feasible and state.value < before - 1e-12 * max(1.0, abs(before)):
            improved = True
        else:
            state.A = old
            state.recompute()
    return improved


def _can_exchange(state: SearchState, n: int, m: int) -> bool:
    tol = lambda cap: cap * (1 + 1e-12) + 1e-9  # noqa: E731
    return bool(
        state.used[m] <= tol(state.cap[n])
        and state.used[n] <= tol(state.cap[m])
        and not np.any(state.A[m] & ~state.fits[n])
        and not np.any(state.A[n] & ~state.fits[m])
    )


def enforce_eps(state: SearchState, rng: np.random.Generator) -> None:
    """Shed memory at the least J cost per byte until the total fits eps."""
    while state.used.sum() > state.problem.eps_capacity * (1 + 1e-12) + 1e-9:
        best = None
        for n in rng.permutation(state.problem.n_clients):
            move = state.best_move(int(n), "repair")
            if move is not None and (best is None or move.gain / move.saving < best.gain / best.saving):
                best = move
        if best is None:
            raise PlanInfeasible(
                "the heuristic cannot bring total memory under eps while covering every block"
            )
        state.apply(best)
    state.recompute()


def initial_plan(problem: Problem, k_max: np.ndarray, k: int | None, seed: int) -> np.ndarray:
    restart = k is not None
    k = best_common_count(problem, k_max) if k is None else k
    return fill_least_covered(problem, cover_once(problem, seed, jitter=restart), np.minimum(k, k_max))


def descend(problem: Problem, A: np.ndarray, rng: np.random.Generator, deadline: float) -> SearchState:
    """Make A feasible (non-empty rows, every required block covered, eps), then local search."""
    state = SearchState(problem, np.asarray(A, bool) & problem.fits)
    _ensure_nonempty(state)
    cover_missing_blocks(state)
    enforce_eps(state, rng)
    local_search(state, "bound", deadline, rng)
    unequal = not problem.consts.equal_weights(problem.n_clients)
    while column_swap_pass(state, deadline) | (unequal and exchange_pass(state, deadline, rng)):
        local_search(state, "bound", deadline, rng)
    return state


def heuristic_plan(
    problem: Problem,
    time_limit: float = 0.8,
    seed: int = 0,
    init: np.ndarray | None = None,
    patience: int = 24,
) -> tuple[np.ndarray, float]:
    """(A, J of the bound-optimised plan before the memory phase). After the first descent, while
    time is left and the last `patience` tries found nothing better, iterated local search: every
    other try starts from a fresh construction with a random block count, the others from the best
    plan kicked by a few random block-set exchanges."""
    start = time.perf_counter()
    search_until = start + 0.75 * time_limit
    rng = np.random.default_rng(seed)
    k_max = max_block_counts(problem)
    first = initial_plan(problem, k_max, None, seed) if init is None else init
    best = descend(problem, first, rng, search_until)
    tries = 0
    while tries < patience and time.perf_counter() < search_until:
        tries += 1
        try:
            if tries % 2:
                start_A = initial_plan(problem, k_max, int(rng.integers(1, k_max.max() + 1)), seed + tries)
            else:
                start_A = kick(best.A, rng)
            other = descend(problem, start_A, rng, search_until)
        except PlanInfeasible:
            continue
        if other.value < best.value - 1e-12 * max(1.0, abs(best.value)):
            best, tries = other, 0
    value = best.value + problem.constant
    limit = np.inf if problem.tol == np.inf else (1 + problem.tol) * value - problem.constant
    local_search(best, "memory", start + time_limit, rng, limit)
    return best.A.copy(), value


def kick(A: np.ndarray, rng: np.random.Generator, swaps: int = 2) -> np.ndarray:
    """The plan with a few random pairs of blocks trading their covering sets (descend repairs it)."""
    A = A.copy()
    for _ in range(swaps):
        a, b = rng.choice(A.shape[1], size=2, replace=A.shape[1] < 2)
        A[:, [a, b]] = A[:, [b, a]]
    return A


def _ensure_nonempty(state: SearchState) -> None:
    """A warm start may leave a client with nothing it may still hold: give it its cheapest block."""
    for n in np.flatnonzero(~state.A.any(1)):
        new = np.zeros(state.problem.n_blocks, bool)
        new[np.argmin(np.where(state.fits[n], state.delta, np.inf))] = True
        state.set_client(int(n), new)
    over = np.flatnonzero(state.used > state.cap * (1 + 1e-12) + 1e-9)
    for n in over:  # a warm start from another budget: keep its cheapest blocks that fit
        new = np.zeros(state.problem.n_blocks, bool)
        room = state.cap[n]
        for blk in np.flatnonzero(state.A[n])[np.argsort(state.delta[state.A[n]])]:
            if state.delta[blk] <= room:
                new[blk], room = True, room - state.delta[blk]
        if not new.any():
            new[np.argmin(np.where(state.fits[n], state.delta, np.inf))] = True
        state.set_client(int(n), new)
    state.recompute()
