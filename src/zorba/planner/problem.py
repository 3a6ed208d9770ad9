"""The planning problem every solver answers, and what a solver returns.

    lexmin over A in {0,1}^{N x L}:  ( J(A),  sum_n M_n(A) )
    subject to  M_n(A) <= B_n            for every client (its budget)
                sum_l A[n, l] >= 1        every client trains something
                sum_n M_n(A) <= eps       optional epsilon constraint on total memory
                A[n, l] = 0 unless allowed[n, l]; every required block covered (else J = inf)

"Lexicographic" with a tolerance: first J* = min J, then the least total memory among plans with
J(A) <= (1 + tol) J*.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from zorba.planner.bound import BoundConstants, bound, constant_term
from zorba.planner.memory_model import MemoryModel, format_bytes


class PlanInfeasible(ValueError):
    """No plan satisfies the budgets (or eps); the message names the client and what it needs."""


class CoverageInfeasible(PlanInfeasible):
    """Each client fits some plan, but no single-round plan covers every required block."""


@dataclass(frozen=True)
class Plan:
    A: np.ndarray  # (N, L) bool
    bound: float  # J(A)
    client_memory: np.ndarray  # (N,) bytes
    total_memory: float
    solver: str
    seconds: float
    best_bound: float  # J* of the first lexicographic stage (the heuristic: its own best)

    def blocks(self, n: int) -> tuple[int, ...]:
        return tuple(int(b) for b in np.flatnonzero(self.A[n]))


@dataclass(frozen=True)
class Problem:
    consts: BoundConstants
    mem: MemoryModel
    budgets: np.ndarray
    eps: float | None = None
    tol: float = 1e-3
    required: np.ndarray | None = None  # (L,) blocks that must be covered; default all
    allowed: np.ndarray | None = None  # (N, L) blocks a client may activate; default all
    client_ids: Sequence[int] | None = field(default=None, compare=False)  # names for messages

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", np.asarray(self.budgets, dtype=float))
        if self.mem.n_blocks != self.consts.n_blocks:
            raise ValueError(
                f"memory model has {self.mem.n_blocks} blocks, bound constants {self.consts.n_blocks}"
            )
        if self.tol < 0:
            raise ValueError("tol must be >= 0")

    @property
    def n_clients(self) -> int:
        return len(self.budgets)

    @property
    def n_blocks(self) -> int:
        return self.consts.n_blocks

    @cached_property
    def must_cover(self) -> np.ndarray:
        return np.ones(self.n_blocks, bool) if self.required is None else np.asarray(self.required, bool)

    @cached_property
    def fixed(self) -> np.ndarray:
        return self.mem.fixed(self.n_clients)

    @cached_property
    def capacity(self) -> np.ndarray:
        """(N,) bytes each client has for active blocks."""
        return self.budgets - self.fixed

    @cached_property
    def fits(self) -> np.ndarray:
        """(N, L): block l alone fits client n's budget and is allowed."""
        fits = self.mem.delta[None, :] <= self.capacity[:, None]
        return fits if self.allowed is None else fits & np.asarray(self.allowed, bool)

    @cached_property
    def eta(self) -> float:
        return self.consts.step_size(self.n_clients)

    @cached_property
    def weights(self) -> np.ndarray:
        return self.consts.client_weights(self.n_clients)

    @property
    def alpha(self) -> float:
        """Coefficient of V in J: 2 L eta."""
        return 2 * self.consts.smooth * self.eta

    @property
    def beta(self) -> float:
        """Coefficient of Dr in J: 2 L^2 eta^2 kappa_K."""
        return 2 * self.consts.smooth**2 * self.eta**2 * self.consts.drift_factor

    @property
    def constant(self) -> float:
        return constant_term(self.consts, self.eta)

    @property
    def eps_capacity(self) -> float:
        """Bytes all clients together may spend on active blocks."""
        return np.inf if self.eps is None else self.eps - float(self.fixed.sum())

    def name(self, n: int) -> int:
        return int(self.client_ids[n]) if self.client_ids is not None else n

    def check_budgets(self) -> None:
        """Raise PlanInfeasible naming the first client whose budget fits no block (or a too small eps)."""
        cheapest = np.where(_allowed_or_all(self), self.mem.delta[None, :], np.inf)
        smallest_block = cheapest.argmin(axis=1)
        need = self.fixed + cheapest.min(axis=1)
        short = np.flatnonzero(need > self.budgets)
        if short.size:
            n = int(short[0])
            others = f" (and {short.size - 1} more clients)" if short.size > 1 else ""
            raise PlanInfeasible(
                f"client {self.name(n)}: budget {format_bytes(self.budgets[n])} < {format_bytes(need[n])} needed "
                f"for the smallest plan (1 block: block {int(smallest_block[n])}){others}"
            )
        if self.eps is not None and need.sum() > self.eps:
            raise PlanInfeasible(
                f"eps {format_bytes(self.eps)} < {format_bytes(need.sum())} needed for every client's smallest plan"
            )
        lonely = np.flatnonzero(self.must_cover & ~self.fits.any(axis=0))
        if lonely.size:
            blk = int(lonely[0])
            raise CoverageInfeasible(
                f"block {blk} ({format_bytes(self.mem.delta[blk])} when active) fits no client's budget"
            )

    def restricted(self, required: np.ndarray, allowed: np.ndarray) -> Problem:
        return Problem(
            self.consts, self.mem, self.budgets, self.eps, self.tol, required, allowed, self.client_ids
        )

    def with_eps(self, eps: float | None, tol: float | None = None) -> Problem:
        tol = self.tol if tol is None else tol
        return Problem(
            self.consts, self.mem, self.budgets, eps, tol, self.required, self.allowed, self.client_ids
        )

    def feasible(self, A: np.ndarray) -> bool:
        A = np.asarray(A, bool)
        use = A @ self.mem.delta
        ok = (
            np.all(use <= self.capacity * (1 + 1e-12) + 1e-9)
            and np.all(A.sum(1) >= 1)
            and not np.any(A & ~self.fits)
        )
        return bool(ok and use.sum() <= self.eps_capacity * (1 + 1e-12) + 1e-9)

    def evaluate(self, A: np.ndarray) -> float:
        return bound(A, self.consts, self.must_cover)

    def make_plan(self, A: np.ndarray, solver: str, seconds: float, best_bound: float | None = None) -> Plan:
        A = np.asarray(A, bool)
        value = self.evaluate(A)
        memory = self.mem.client_memory(A)
        best = value if best_bound is None else best_bound
        return Plan(A, value, memory, float(memory.sum()), solver, seconds, best)


def _allowed_or_all(problem: Problem) -> np.ndarray:
    shape = (problem.n_clients, problem.n_blocks)
    return np.ones(shape, bool) if problem.allowed is None else np.asarray(problem.allowed, bool)
