"""A plan under local search: per-block sums that make every single-client move (drop a block, add
one, swap one for another) exactly evaluable in O(L^2), for one client or many at once.

With client n taken out, its part of J for a block set S' is
    sum_{l in S'} gain0_l + D' sum_{l in S'} r_l + sigma2(D', d') sum_{l in S'} h_l
(docs/theory.md, the box: J is linear in each block's V and Dr numerators once the coverage is
fixed), so a move only changes five sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zorba.planner.problem import Problem


@dataclass(frozen=True)
class Move:
    client: int
    drop: int | None
    add: int | None
    gain: float  # change of J (negative improves)
    saving: float  # bytes freed (negative: costs memory)


@dataclass(frozen=True)
class MoveBatch:
    """Best moves of several clients: drop / add are block ids or -1."""

    rows: np.ndarray
    drop: np.ndarray
    add: np.ndarray
    gain: np.ndarray
    saving: np.ndarray

    def move(self, i: int) -> Move:
        return Move(
            int(self.rows[i]),
            _none_if_neg(self.drop[i]),
            _none_if_neg(self.add[i]),
            float(self.gain[i]),
            float(self.saving[i]),
        )


class SearchState:
    """A plan plus per-block sums (coverage, V and Dr numerators) that make a client's move O(L^2)."""

    def __init__(self, problem: Problem, A: np.ndarray) -> None:
        c = problem.consts
        self.problem = problem
        self.p = problem.weights
        self.G2, self.d, self.q, self.kappa = c.G2, c.effective_sizes, c.perturbations, c.kappa
        self.kq = 1 + c.kappa / c.perturbations
        self.zeta2, self.alpha, self.beta = c.zeta2, problem.alpha, problem.beta
        # per-block smoothness (bound.py): noise weights L_l / L, drift split c sigma2_n + a_l sigma2_nl
        self.v, (self.c, self.a) = c.noise_weights, c.drift_weights
        self.delta, self.cap, self.fits = problem.mem.delta, problem.capacity, problem.fits
        self.required = problem.must_cover
        self.A = np.array(A, bool)
        self.recompute()

    # --- state ------------------------------------------------------------------------------------
    def recompute(self) -> None:
        """Rebuild the sums from A (also clears the rounding drift of many incremental moves)."""
        A = self.A.astype(float)
        self.D, self.dn = A @ self.G2, A @ self.d
        self.sigma_n = self.D * (1 + (self.dn + self.kappa) / self.q)
        sigma_nl = self.kq * self.G2 + self.d * self.D[:, None] / self.q
        self.count = self.A.sum(0)
        self.P, self.U = self.p @ A, self.p @ (1 - A)
        self.W = (self.p[:, None] ** 2 * A * sigma_nl).sum(0)
        self.X = (self.p[:, None] * A * self.drift_numerator(self.sigma_n[:, None], sigma_nl)).sum(0)
        self.used = A @ self.delta
        self.value = self.objective()

    def phi(self, count, P, U, W, X) -> np.ndarray:
        """Per-block part of J for given sums; 0 for an uncovered block (guarded by `uncovered`)."""
        covered = count > 0
        safe = np.where(covered, P, 1.0)
        val = 2 * self.zeta2 * np.maximum(U, 0) / safe + self.alpha * self.v * W / safe**2 + self.beta * X / safe
        return np.where(covered, val, 0.0)

    def objective(self) -> float:
        """J minus its plan-independent constant; +inf if a required block is uncovered."""
        if np.any(self.required & (self.count == 0)):
            return np.inf
        return float(self.phi(self.count, self.P, self.U, self.W, self.X).sum())

    def drift_numerator(self, sigma_n, sigma_nl):
        """A client's drift charge on each block: c sigma2_n + a_l sigma2_{n,l} (sigma2_n under A1)."""
        return self.c * sigma_n + self.a * sigma_nl

    def sigma(self, D, dn):
        return D * (1 + (dn + self.kappa) / self.q)

    # --- moves, evaluated for many clients at once -------------------------------------------------
    def client_terms(self, rows: np.ndarray):
        """(m, L) arrays for the clients in rows, each taken out of the plan: block l's gain0, r, h,
        so that a client's part of J for a set S' is sum_S' gain0 + D' sum_S' r + sigma2(D', d') sum_S' h;
        and which blocks it alone covers (it must keep them)."""
        s, pn = self.A[rows], self.p[rows][:, None]
        count = self.count[None, :] - s
        alone = count == 0
        sigma_nl = self.kq * self.G2 + self.d * self.D[rows][:, None] / self.q
        P = np.where(alone, 0.0, self.P - pn * s)
        U = np.where(alone, 1.0, self.U + pn * s)
        W = np.where(alone, 0.0, self.W - pn**2 * sigma_nl * s)
        X = np.where(alone, 0.0, self.X - pn * self.drift_numerator(self.sigma_n[rows][:, None], sigma_nl) * s)
        P_in = P + pn
        with_n = self.phi(count + 1, P_in, U - pn, W + pn**2 * self.kq * self.G2, X)
        gain0 = with_n - self.phi(count, P, U, W, X)
        r = self.alpha * self.v * pn**2 * self.d / (self.q * P_in**2)
        h = self.beta * self.c * pn / P_in
        if np.any(self.a):  # the own-block drift a_l sigma2_{n,l}(D') = a_l (kq G_l^2 + r_l D' / q)
            gain0 = gain0 + self.beta * self.a * pn * self.kq * self.G2 / P_in
            r = r + self.beta * self.a * pn * self.d / (self.q * P_in)
        return gain0, r, h, s & alone & self.required

    def best_moves(self, rows: np.ndarray, mode: str, limit: float = np.inf) -> MoveBatch:
        """Each client's best single move: drop a block, add one, or swap one for another.
        mode 'bound': the largest decrease of J. 'memory': the most bytes saved with J <= limit.
        'repair': the least increase of J per byte saved."""
        s = self.A[rows]
        m, L = s.shape
        gain0, r, h, must_keep = self.client_terms(rows)
        terms = (gain0, r, h, np.broadcast_to(self.G2, s.shape), np.broadcast_to(self.d, s.shape))
        cur = [(t * s).sum(1) for t in terms[:3]] + [self.D[rows], self.dn[rows]]
        f_cur = self._f(*cur)
        f_drop = self._f(*[c[:, None] - t for c, t in zip(cur, terms, strict=True)])
        f_add = self._f(*[c[:, None] + t for c, t in zip(cur, terms, strict=True)])
        f_swap = self._f(
            *[c[:, None, None] - t[:, :, None] + t[:, None, :] for c, t in zip(cur, terms, strict=True)]
        )
        gain = np.concatenate([f_drop, f_add, f_swap.reshape(m, L * L)], axis=1) - f_cur[:, None]
        may_drop, may_add = s & ~must_keep, ~s & self.fits[rows]
        keeps_one = (s.sum(1) > 1)[:, None]
        ok = np.concatenate(
            [may_drop & keeps_one, may_add, (may_drop[:, :, None] & may_add[:, None, :]).reshape(m, L * L)], 1
        )
        saving = np.concatenate(
            [self.delta, -self.delta, (self.delta[:, None] - self.delta[None, :]).ravel()]
        )
        room = np.minimum(self.cap[rows] - self.used[rows], self.problem.eps_capacity - self.used.sum())
        ok &= -saving[None, :] <= room[:, None] * (1 + 1e-12) + 1e-9
        k, found = self._pick(gain, np.broadcast_to(saving, gain.shape), ok, mode, limit)
        drop = np.where(k < L, k, np.where(k >= 2 * L, (k - 2 * L) // L, -1))
        add = np.where((k >= L) & (k < 2 * L), k - L, np.where(k >= 2 * L, (k - 2 * L) % L, -1))
        pick = (np.arange(m), k)
        return MoveBatch(rows[found], drop[found], add[found], gain[pick][found], saving[k][found])

    def _f(self, g0, R, H, D, dn):
        return g0 + D * R + self.sigma(D, dn) * H

    def _pick(self, gain, saving, ok, mode: str, limit: float) -> tuple[np.ndarray, np.ndarray]:
        if mode == "bound":
            score = np.where(ok, gain, np.inf)
            k = np.argmin(score, axis=1)
            return k, score[np.arange(len(k)), k] < -1e-12 * max(1.0, abs(self.value))
        allowed = ok & (saving > 0)
        if mode == "memory":
            score = np.where(allowed & (self.value + gain <= limit), -saving, np.inf)
        else:  # repair: cheapest J increase per byte
            score = np.where(allowed, gain / np.maximum(saving, 1e-300), np.inf)
        k = np.argmin(score, axis=1)
        return k, np.isfinite(score[np.arange(len(k)), k])

    def best_move(self, n: int, mode: str, limit: float = np.inf) -> Move | None:
        batch = self.best_moves(np.array([n]), mode, limit)
        return batch.move(0) if len(batch.rows) else None

    def apply(self, move: Move) -> None:
        n = move.client
        new = self.A[n].copy()
        if move.drop is not None:
            new[move.drop] = False
        if move.add is not None:
            new[move.add] = True
        self.set_client(n, new)
        self.value += move.gain

    def set_client(self, n: int, new: np.ndarray) -> None:
        self._contribute(n, -1.0)
        self.A[n] = new
        self.D[n], self.dn[n] = self.G2[new].sum(), self.d[new].sum()
        self.sigma_n[n] = self.sigma(self.D[n], self.dn[n])
        self.used[n] = self.delta[new].sum()
        self._contribute(n, 1.0)
        empty = self.count == 0
        self.P[empty], self.W[empty], self.X[empty], self.U[empty] = 0.0, 0.0, 0.0, 1.0

    def _contribute(self, n: int, sign: float) -> None:
        s, pn = self.A[n], self.p[n]
        sigma_nl = self.kq * self.G2 + self.d * self.D[n] / self.q
        self.count += int(sign) * s
        self.P += sign * pn * s
        self.U -= sign * pn * s
        self.W += sign * pn**2 * sigma_nl * s
        self.X += sign * pn * self.drift_numerator(self.sigma_n[n], sigma_nl) * s


def _none_if_neg(x) -> int | None:
    return None if x < 0 else int(x)
