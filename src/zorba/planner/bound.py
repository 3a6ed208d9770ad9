"""The convergence bound J(A) of docs/theory.md, evaluated numerically.

For a plan A (N x L, clients x blocks), client weights p (summing to 1 over the planned clients) and
P_l = sum_n p_n A[n, l] (the weight mass covering block l), one round at step size eta contributes

    2 B(A) + 2 L eta V(A) + 2 L^2 eta^2 kappa_K Dr(A)

    B  = sum_l zeta_l^2 (1 - P_l) / P_l                      coverage bias (0 at full coverage)
    V  = sum_l sum_{n in C_l} (p_n / P_l)^2 sigma2[n, l]       ZO + minibatch noise of the block means
    Dr = sum_l sum_{n in C_l} (p_n / P_l) sigma2[n]            client drift over K local steps
    sigma2[n, l] = G_l^2 (1 + kappa/q) + r_l D_n / q,  sigma2[n] = D_n (1 + (r_n + kappa)/q)
    D_n = sum_{l in S_n} G_l^2 (active gradient mass), r_n = sum_{l in S_n} r_l (active effective size)

r_l is block l's effective size (the coordinates the loss depends on; d_l unless estimated, see
estimate.effective_block_sizes). With per-block smoothness (`block_smooth` L_l and `cross_smooth` eps,
assumption A1' of docs/theory.md section 13) V and Dr are weighted per block, relative to L:

    V  = sum_l (L_l / L) V_l,   Dr = sum_l sum_{n in C_l} (p_n / P_l) [c sigma2[n] + a_l sigma2[n, l]]
    c = eps^2 / L^2,  a_l = (L_l^2 - eps^2) / L^2      (L_l = eps = L: the global form above)

and the step-size condition is max_l L_l eta K <= 1/2. Two bounds on the same quantity, min_t E|grad f(w_t)|^2:

- `bound` / `schedule_bound` (Theorem 1): (2 Delta / (eta K T) + mean over the window's plans of the
  above) / pi_min, pi_min the least fraction of the window's plans covering a block. A block the
  planner requires and a single plan leaves uncovered makes it +inf: the planner's feasibility.
- `plan_bound` / `sequence_bound` (Theorem 2): 2 Delta / (eta K T) + mean over the rounds' plans of
  (the above + U), U = sum of G_l^2 over the blocks the round leaves uncovered. Finite for every plan;
  equal to `bound` for a plan covering every block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zorba.planner.estimate import ScalarReport, fit_block_second_moments, fit_heterogeneity, mass_rows

# Fourth-moment constant of the perturbation: E|(u.g) u_l|^2 = d_l |g_S|^2 + (1 + kappa) |g_l|^2.
KAPPA = {"gaussian": 1.0, "rademacher": -1.0}


@dataclass(frozen=True)
class BoundConstants:
    block_sizes: np.ndarray  # d_l, parameters per block
    G2: np.ndarray  # G_l^2 >= E|grad_l F_n(w; xi)|^2 for every n, w
    zeta2: np.ndarray  # zeta_l^2 >= sum_n p_n |grad_l f_n - grad_l f|^2
    smooth: float = 1.0  # L, smoothness of f and of every f_n
    f_gap: float = 1.0  # Delta = f(w_0) - f*
    rounds: int = 1000  # T
    local_steps: int = 1  # K
    perturbations: int = 1  # q per local step
    lr: float | None = None  # eta; None: the step size that is optimal for the all-blocks plan
    estimator: str = "rademacher"
    weights: np.ndarray | None = None  # p_n, one per client id; None: equal weights
    # r_l <= d_l, the block's coordinates the loss depends on (docs/theory.md, section 2); None: d_l
    effective_sizes: np.ndarray | None = None
    # L_l, per-block smoothness (A1', docs/theory.md section 13); None: the global L for every block
    block_smooth: np.ndarray | None = None
    # eps, how much block l's gradient moves with the other blocks (A1'); None: L (exact when L_l = L)
    cross_smooth: float | None = None

    def __post_init__(self) -> None:
        if self.effective_sizes is None:
            object.__setattr__(self, "effective_sizes", self.block_sizes)
        if self.block_smooth is not None:
            object.__setattr__(self, "block_smooth", np.asarray(self.block_smooth, dtype=float))
        for name in ("block_sizes", "G2", "zeta2", "effective_sizes"):
            object.__setattr__(self, name, np.asarray(getattr(self, name), dtype=float))
        if self.weights is not None:
            object.__setattr__(self, "weights", np.asarray(self.weights, dtype=float))
        L = len(self.block_sizes)
        if self.G2.shape != (L,) or self.zeta2.shape != (L,) or self.effective_sizes.shape != (L,):
            raise ValueError("block_sizes, effective_sizes, G2 and zeta2 must all have one entry per block")
        if np.any(self.G2 < 0) or np.any(self.zeta2 < 0) or np.any(self.block_sizes <= 0):
            raise ValueError("G2, zeta2 must be >= 0 and block sizes > 0")
        if np.any(self.effective_sizes <= 0) or np.any(self.effective_sizes > self.block_sizes):
            raise ValueError("effective sizes must be in (0, block size]")
        if self.block_smooth is not None and (self.block_smooth.shape != (L,) or np.any(self.block_smooth <= 0)):
            raise ValueError("block_smooth must have one positive entry per block")
        if self.smooth <= 0 or (self.cross_smooth is not None and self.cross_smooth < 0):
            raise ValueError("smooth must be > 0 and cross_smooth >= 0")
        if self.estimator not in KAPPA:
            raise ValueError(f"estimator must be one of {sorted(KAPPA)}")
        if self.local_steps < 1 or self.perturbations < 1 or self.rounds < 1:
            raise ValueError("local_steps, perturbations and rounds must be >= 1")

    @property
    def n_blocks(self) -> int:
        return len(self.block_sizes)

    @property
    def kappa(self) -> float:
        return KAPPA[self.estimator]

    @property
    def drift_factor(self) -> float:
        """kappa_K = (1/K) sum_{k<K} k^2 = (K-1)(2K-1)/6: zero for one local step (no drift)."""
        K = self.local_steps
        return (K - 1) * (2 * K - 1) / 6.0

    @property
    def blockwise(self) -> bool:
        """Whether A1' (per-block smoothness) replaces A1 in the bound."""
        return self.block_smooth is not None or self.cross_smooth is not None

    @property
    def noise_weights(self) -> np.ndarray:
        """L_l / L: the weight of block l's noise V_l in V (ones under A1)."""
        if self.block_smooth is None:
            return np.ones(self.n_blocks)
        return self.block_smooth / self.smooth

    @property
    def drift_weights(self) -> tuple[float, np.ndarray]:
        """(c, a_l): block l's drift numerator is sum_n p_n [c sigma2_n + a_l sigma2_{n,l}], c = eps^2/L^2
        for the client's whole displacement, a_l = (L_l^2 - eps^2)/L^2 for its own block's
        (c = 1, a = 0 under A1: every block charged with the client's whole displacement)."""
        eps = self.smooth if self.cross_smooth is None else self.cross_smooth
        c = (eps / self.smooth) ** 2
        return c, self.noise_weights**2 - c

    @property
    def step_smooth(self) -> float:
        """The smoothness of the step-size condition: max_l L_l (L under A1)."""
        return self.smooth if self.block_smooth is None else float(self.block_smooth.max())

    def client_weights(self, n_clients: int) -> np.ndarray:
        """p over the planned clients, normalised to sum to 1."""
        if self.weights is None:
            return np.full(n_clients, 1.0 / n_clients)
        if len(self.weights) != n_clients:
            raise ValueError(f"{len(self.weights)} client weights for {n_clients} clients")
        return self.weights / self.weights.sum()

    def equal_weights(self, n_clients: int) -> bool:
        p = self.client_weights(n_clients)
        return bool(np.allclose(p, p[0], rtol=1e-12, atol=0.0))

    def subset(self, rows: Sequence[int] | np.ndarray) -> BoundConstants:
        """Constants for a subset of the clients (dropouts); weights are renormalised on use."""
        if self.weights is None:
            return self
        return dataclasses.replace(self, weights=self.weights[np.asarray(rows)])

    def step_size(self, n_clients: int) -> float:
        """eta: the configured learning rate, else the minimiser of the bound for the all-blocks plan
        within the theorem's step-size condition L eta K <= 1/2."""
        if self.lr is not None:
            return float(self.lr)
        full = per_round_terms(np.ones((1, n_clients, self.n_blocks)), self)
        return optimal_step(self, float(full.variance[0]), float(full.drift[0]))

    @classmethod
    def from_block_sizes(
        cls,
        block_sizes: Sequence[int] | np.ndarray,
        *,
        heterogeneity: float = 0.5,
        gradient_mass: float = 1.0,
        **kwargs,
    ) -> BoundConstants:
        """Defaults before anything is measured: G_l^2 proportional to the effective size r_l (d_l
        unless `effective_sizes` is given: a coordinate the loss ignores has no gradient) with total
        `gradient_mass`, and zeta_l^2 = heterogeneity * G_l^2 (zeta_l^2 <= G_l^2 always). Given
        `block_smooth` and no `smooth`, L = max_l L_l."""
        if not 0.0 <= heterogeneity <= 1.0:
            raise ValueError("heterogeneity is a fraction of G_l^2 in [0, 1]")
        d = np.asarray(block_sizes, dtype=float)
        r = d if kwargs.get("effective_sizes") is None else np.asarray(kwargs["effective_sizes"], float)
        if kwargs.get("block_smooth") is not None and "smooth" not in kwargs:
            # A1 with L = max_l L_l; L is also the default eps, the cross-block curvature that nothing
            # measures: the conservative choice (docs/theory.md section 13)
            kwargs["smooth"] = float(np.max(kwargs["block_smooth"]))
        G2 = gradient_mass * r / r.sum()
        return cls(d, G2, heterogeneity * G2, **kwargs)

    def estimate_from_scalars(self, reports: Sequence[ScalarReport], ridge: float = 1.0) -> BoundConstants:
        """Constants re-estimated from the reported scalars (docs/theory.md, "Estimating the constants"):
        D_n = mean g^2 per report, G_l^2 by non-negative least squares across reports with different
        block sets (the current G2 as a ridge prior), zeta_l^2 from the spread of per-client norms."""
        if not reports:
            return self
        rows = mass_rows(reports, self.n_blocks)
        G2 = fit_block_second_moments(rows, prior=self.G2, ridge=ridge)
        zeta2 = fit_heterogeneity(rows, G2, previous=self.zeta2, weights=self.weights)
        return dataclasses.replace(self, G2=G2, zeta2=zeta2)


@dataclass(frozen=True)
class RoundTerms:
    """Terms of the bound for a batch of plans, per block: arrays of shape (P, L); the sums over
    blocks (B, V, Dr of docs/theory.md) are the properties."""

    bias_per_block: np.ndarray
    variance_per_block: np.ndarray
    drift_per_block: np.ndarray
    coverage: np.ndarray  # P_l, the weight mass covering block l
    uncovered_per_block: np.ndarray  # G_l^2 where P_l = 0: the gradient no update reaches (Theorem 2)

    @property
    def bias(self) -> np.ndarray:
        return self.bias_per_block.sum(-1)

    @property
    def variance(self) -> np.ndarray:
        return self.variance_per_block.sum(-1)

    @property
    def drift(self) -> np.ndarray:
        return self.drift_per_block.sum(-1)

    @property
    def uncovered(self) -> np.ndarray:
        return self.uncovered_per_block.sum(-1)

    def combined(self, consts: BoundConstants, eta: float) -> np.ndarray:
        """2B + 2 L eta V + 2 L^2 eta^2 kappa_K Dr: what a plan adds per round to the covered blocks'
        part (the planners' objective; `uncovered` is added by Theorem 2 only)."""
        L = consts.smooth
        return (
            2 * self.bias + 2 * L * eta * self.variance + 2 * L**2 * eta**2 * consts.drift_factor * self.drift
        )


def per_round_terms(A: np.ndarray, consts: BoundConstants) -> RoundTerms:
    """B, V, Dr of docs/theory.md for a batch of plans A (P, N, L); uncovered blocks contribute 0 to
    them and G_l^2 to `uncovered`. The dimension in the noise is the effective size r_l."""
    A = np.asarray(A, dtype=float)
    p = consts.client_weights(A.shape[-2])
    r, G2, q, kappa = consts.effective_sizes, consts.G2, consts.perturbations, consts.kappa
    D = A @ G2  # (P, N) active gradient mass
    rn = A @ r  # (P, N) active effective size
    sigma_nl = G2 * (1 + kappa / q) + r * D[..., None] / q  # (P, N, L)
    sigma_n = D * (1 + (rn + kappa) / q)  # (P, N)
    cover = np.einsum("pnl,n->pl", A, p)
    uncovered_mass = np.einsum("pnl,n->pl", 1.0 - A, p)  # exactly 0 at full coverage
    covered = cover > 0
    safe = np.where(covered, cover, 1.0)
    W = np.einsum("pnl,n,pnl->pl", A, p**2, sigma_nl)
    X = np.einsum("pnl,n,pn->pl", A, p, sigma_n)
    if consts.blockwise:  # A1': V_l weighted by L_l / L, drift split into own block and cross part
        c, a = consts.drift_weights
        W = W * consts.noise_weights
        X = c * X + a * np.einsum("pnl,n,pnl->pl", A, p, sigma_nl)
    bias = np.where(covered, consts.zeta2 * uncovered_mass / safe, 0.0)
    variance = np.where(covered, W / safe**2, 0.0)
    drift = np.where(covered, X / safe, 0.0)
    return RoundTerms(bias, variance, drift, cover, np.where(covered, 0.0, G2))


def constant_term(consts: BoundConstants, eta: float) -> float:
    """2 Delta / (eta K T): the part of the bound no plan changes."""
    return 2 * consts.f_gap / (eta * consts.local_steps * consts.rounds)


def optimal_step(consts: BoundConstants, variance: float, drift: float) -> float:
    """argmin over 0 < eta <= 1/(2 L K) of 2Delta/(eta K T) + 2 L eta V + 2 L^2 eta^2 kappa_K Dr
    (with per-block smoothness the cap is 1/(2 max_l L_l K))."""
    L, K = consts.smooth, consts.local_steps
    cap = 1.0 / (2 * consts.step_smooth * K)
    c1 = 2 * consts.f_gap / (K * consts.rounds)
    # derivative * eta^2: 4 L^2 kappa_K Dr eta^3 + 2 L V eta^2 - c1 = 0, one positive root
    roots = np.roots([4 * L**2 * consts.drift_factor * drift, 2 * L * variance, 0.0, -c1])
    positive = [r.real for r in roots if abs(r.imag) < 1e-12 * max(1.0, abs(r)) and r.real > 0]
    return min(cap, min(positive)) if positive else cap


def required_mask(n_blocks: int, required: np.ndarray | None) -> np.ndarray:
    return np.ones(n_blocks, bool) if required is None else np.asarray(required, bool)


def bound_batch(A: np.ndarray, consts: BoundConstants, required: np.ndarray | None = None) -> np.ndarray:
    """J for a batch of single plans (P, N, L): +inf where a required block is uncovered."""
    A = np.asarray(A, dtype=float)
    eta = consts.step_size(A.shape[-2])
    terms = per_round_terms(A, consts)
    value = constant_term(consts, eta) + terms.combined(consts, eta)
    all_required_covered = np.all((terms.coverage > 0) | ~required_mask(A.shape[-1], required), axis=-1)
    return np.where(all_required_covered, value, np.inf)


def bound(A: np.ndarray, consts: BoundConstants, required: np.ndarray | None = None) -> float:
    """J(A) for one plan used every round (docs/theory.md, Theorem 1 with a window of one plan)."""
    return float(bound_batch(np.asarray(A)[None], consts, required)[0])


def schedule_bound(
    plans: Sequence[np.ndarray], consts: BoundConstants, required: np.ndarray | None = None
) -> float:
    """J for a window of plans, one drawn uniformly at random each round (Theorem 1)."""
    As = np.asarray(plans, dtype=float)
    eta = consts.step_size(As.shape[-2])
    terms = per_round_terms(As, consts)
    pi = (terms.coverage > 0).mean(axis=0)[required_mask(As.shape[-1], required)]
    pi_min = float(pi.min()) if pi.size else 1.0
    if pi_min == 0.0:
        return float("inf")
    return (constant_term(consts, eta) + float(terms.combined(consts, eta).mean())) / pi_min


def plan_bound_batch(A: np.ndarray, consts: BoundConstants) -> np.ndarray:
    """Theorem 2 for a batch of single plans (P, N, L), each used every round: finite, uncovered
    blocks add G_l^2 (their gradient is never reduced, and |grad_l f|^2 <= G_l^2)."""
    A = np.asarray(A, dtype=float)
    eta = consts.step_size(A.shape[-2])
    terms = per_round_terms(A, consts)
    return constant_term(consts, eta) + terms.combined(consts, eta) + terms.uncovered


def plan_bound(A: np.ndarray, consts: BoundConstants) -> float:
    """J(A) of Theorem 2 for one plan used every round; equals `bound(A, consts)` when A covers every block."""
    return float(plan_bound_batch(np.asarray(A)[None], consts)[0])


def sequence_bound(plans: Sequence[np.ndarray], consts: BoundConstants) -> float:
    """Theorem 2 for the plans a run actually used, one per round, all over the same clients (any
    plans chosen from the past: re-planning, random or round-robin): the mean of their single-plan values."""
    return float(plan_bound_batch(np.asarray(plans, dtype=float), consts).mean())
