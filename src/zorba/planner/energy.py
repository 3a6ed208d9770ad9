"""ZorBA's planner: maximise the expected loss decrease of a round under the clients' memory budgets.

What a round gains (docs/theory.md A4): with the step rule of steprule.py
(client step lr * s(S), s(S) = (D / d_S)^gamma) and the coverage factor with beta = 1, block l moves
by the sum of its covering clients' updates, so clients add up and the round's first-order decrease
is eta K sum_n s(S_n) |grad_{S_n} f|^2: separable over clients. Each client's term needs its active
set's gradient energy, which the clients already measure: a reported scalar g is a directional
derivative over the client's whole active set, E[g^2] = sum_{l in S} e_l for Rademacher z. The
planner fits e_l >= 0 to the last rounds' mean g^2 per client (non-negative least squares, pulled
towards the pooled energy density so that blocks nobody trained look average rather than worthless),
then solves, every round:

    stage 1  max  sum_n s(S_n) e(S_n)          s.t.  M_n(S_n) <= B_n,  sum_n M_n(S_n) <= eps
    stage 2  min  sum_n M_n(S_n)               s.t.  the same, and stage 1's value within (1 - tol)

an epsilon-constraint lexicographic MILP (scipy.optimize.milp / HiGHS) over one-hot choices of each
client's block set. Deterministic: no time limit, no randomness, so a plan is a pure function of the
seed and the inputs. Sweeping eps gives the Pareto front (`zorba plan --pareto`)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, lsq_linear, milp

from zorba.memory.memory_model import MemoryModel
from zorba.planner.plans import BlockPlanner
from zorba.planner.steprule import StepRule

MAX_ENUMERATED_BLOCKS = 12  # up to 2^12 candidate sets per client; larger models: density-greedy sets


class NoFeasiblePlan(ValueError):
    """No assignment satisfies the budgets and the memory cap."""


class BlockEnergy:
    """e_l, the expected squared directional derivative a block adds to a client's scalar, fitted to
    the last `window` rounds; before any report, e_l is proportional to the block's size."""

    def __init__(self, sizes: Sequence[float], window: int = 5, ridge: float = 0.1) -> None:
        self.sizes = np.asarray(sizes, float)
        self.ridge = ridge
        self.rows: deque[tuple[np.ndarray, float]] = deque()  # the last `window` rounds' (set, mean g^2)
        self.rounds: deque[int] = deque(maxlen=window)

    def observe(self, sets: Mapping[int, Sequence[int]], scalars: Mapping[int, Sequence[float]]) -> None:
        added = 0
        for c, values in sorted(scalars.items()):
            if c in sets and values and sets[c]:
                row = np.zeros(len(self.sizes))
                row[list(sets[c])] = 1.0
                self.rows.append((row, float(np.mean(np.square(values)))))
                added += 1
        self.rounds.append(added)
        while len(self.rows) > sum(self.rounds):  # keep only the last `window` rounds' rows
            self.rows.popleft()

    def estimate(self) -> np.ndarray:
        if not self.rows:
            return self.sizes / self.sizes.sum()
        A = np.stack([r for r, _ in self.rows])
        y = np.array([v for _, v in self.rows])
        density = y.sum() / max(float((A @ self.sizes).sum()), 1e-30)  # pooled energy per weight
        prior = density * self.sizes
        # Ridge rows, scaled to the data: pull each e_l towards the pooled density times its size.
        weight = np.sqrt(self.ridge * len(y)) / np.maximum(prior, 1e-30)
        A_aug = np.vstack([A / max(y.mean(), 1e-30), np.diag(weight)])
        y_aug = np.concatenate([y / max(y.mean(), 1e-30), weight * prior])
        return np.maximum(lsq_linear(A_aug, y_aug, bounds=(0.0, np.inf), method="bvls").x, 0.0)


@dataclass(frozen=True)
class Candidates:
    """One client's block sets that fit its budget, with their progress and memory."""

    sets: list[tuple[int, ...]]
    progress: np.ndarray
    memory: np.ndarray


def client_candidates(energy: np.ndarray, rule: StepRule, delta: np.ndarray, fixed: float, budget: float) -> Candidates:
    """Every non-empty set within budget (few blocks), or the density-greedy nested sets (many), kept
    only where no other set has both more progress and less memory (the rest can never be chosen)."""
    L = len(delta)
    if L <= MAX_ENUMERATED_BLOCKS:
        sets = [s for k in range(1, L + 1) for s in itertools.combinations(range(L), k)]
    else:
        order = np.argsort(-energy / np.maximum(np.asarray(rule.sizes), 1e-30), kind="stable")
        sets = [tuple(sorted(int(b) for b in order[:k])) for k in range(1, L + 1)]
    sets = [s for s in sets if fixed + delta[list(s)].sum() <= budget]
    progress = np.array([rule.scale(s) * energy[list(s)].sum() for s in sets])
    memory = np.array([fixed + delta[list(s)].sum() for s in sets])
    keep = [i for i in range(len(sets))
            if not np.any((progress > progress[i]) & (memory <= memory[i]))]
    return Candidates([sets[i] for i in keep], progress[keep], memory[keep])


def allocate(cands: Sequence[Candidates], eps: float | None = None, tol: float = 0.02) -> list[int]:
    """The epsilon-constraint lexicographic MILP: per client the index of its chosen candidate."""
    sizes = [len(c.sets) for c in cands]
    if any(n == 0 for n in sizes):
        raise NoFeasiblePlan(f"client {sizes.index(0)}: no block fits its memory budget")
    progress = np.concatenate([c.progress for c in cands])
    memory = np.concatenate([c.memory for c in cands])
    one_hot = np.zeros((len(cands), len(progress)))
    start = np.cumsum([0, *sizes])
    for n in range(len(cands)):
        one_hot[n, start[n] : start[n + 1]] = 1.0
    rows = [LinearConstraint(one_hot, 1.0, 1.0)]
    if eps is not None:
        rows.append(LinearConstraint(memory[None, :], -np.inf, eps))
    scale = max(float(progress.max()), 1e-30)
    best = _solve(-progress / scale, rows)
    if best is None:
        raise NoFeasiblePlan(f"no plan within the memory cap {eps:.4g} bytes")
    floor = (1.0 - tol) * float(progress @ best) / scale
    rows.append(LinearConstraint(progress[None, :] / scale, floor - 1e-12, np.inf))
    lightest = _solve(memory / max(float(memory.max()), 1e-30), rows)
    x = best if lightest is None else lightest
    return [int(np.argmax(x[start[n] : start[n + 1]])) for n in range(len(cands))]


def _solve(c: np.ndarray, rows: list[LinearConstraint]) -> np.ndarray | None:
    res = milp(c, constraints=rows, integrality=np.ones_like(c), bounds=Bounds(0, 1))
    return None if res.x is None else np.round(res.x)


class EnergyPlanner(BlockPlanner):
    """Plans each round from block energies re-estimated from the previous rounds' scalars."""

    name = "zorba"

    def __init__(self, rule: StepRule, mem: MemoryModel, budgets: Sequence[float], eps: float | None = None,
                 tol: float = 0.02, window: int = 5) -> None:
        self.rule, self.mem, self.eps, self.tol = rule, mem, eps, tol
        self.budgets = np.asarray(budgets, float)
        self.energy = BlockEnergy(rule.sizes, window)
        self.last: dict[int, tuple[int, ...]] = {}
        self.check_budgets()

    def check_budgets(self) -> None:
        fixed = self.mem.fixed(len(self.budgets))
        short = np.flatnonzero(fixed + self.mem.delta.min() > self.budgets)
        if len(short):
            raise NoFeasiblePlan(f"client {int(short[0])}: its budget holds no block")

    def candidates(self, clients: Sequence[int], energy: np.ndarray | None = None) -> list[Candidates]:
        energy = self.energy.estimate() if energy is None else energy
        fixed = self.mem.fixed(len(self.budgets))
        return [client_candidates(energy, self.rule, self.mem.delta, float(fixed[c]), float(self.budgets[c]))
                for c in clients]

    def plan(self, round_idx: int, clients: Sequence[int]) -> dict[int, tuple[int, ...]]:
        ids = sorted(int(c) for c in clients)
        if not ids:
            return {}
        cands = self.candidates(ids)
        chosen = allocate(cands, self.eps, self.tol)
        self.last = {c: cand.sets[j] for c, cand, j in zip(ids, cands, chosen, strict=True)}
        return dict(self.last)

    def observe(self, round_idx: int, reports: Mapping[int, Sequence[float]]) -> None:
        self.energy.observe(self.last, reports)


@dataclass(frozen=True)
class FrontPoint:
    eps: float
    total_memory: float
    progress: float
    sets: list[tuple[int, ...]]


def pareto_front(cands: Sequence[Candidates], points: int = 8, tol: float = 0.0) -> list[FrontPoint]:
    """The epsilon-constraint sweep: eps from the least memory any plan needs (every client its
    lightest set) to what the unconstrained optimum uses; one lexicographic solve per eps."""
    lightest = sum(float(c.memory.min()) for c in cands)
    free = allocate(cands, None, tol)
    heaviest = sum(float(c.memory[j]) for c, j in zip(cands, free, strict=True))
    front = []
    for eps in np.linspace(lightest, heaviest, max(points, 2)):
        chosen = allocate(cands, float(eps) * (1 + 1e-12), tol)
        front.append(FrontPoint(
            float(eps), sum(float(c.memory[j]) for c, j in zip(cands, chosen, strict=True)),
            sum(float(c.progress[j]) for c, j in zip(cands, chosen, strict=True)),
            [c.sets[j] for c, j in zip(cands, chosen, strict=True)]))
    return front
