"""The one-round progress objective Phi(A) (docs/theory.md section 14, Theorem 4) and its run-time
estimate from shared-seed probes.

Theorems 1-3 polarise the first-order term, -<g_l, m_l> = (|b_l|^2 - |g_l|^2 - |m_l|^2) / 2, and then
drop |m_l|^2. When clients' gradients are large and only partly aligned (label skew), |b_l|^2 and
|m_l|^2 are both large and nearly cancel, so the dropped term is what decides the ranking: on SST-2
the polarised forms rank plans at Spearman <= +0.33 against the measured one-round change. Phi keeps
the inner product:

    Phi(A) = - eta K sum_l sum_{n in C_l} omega_nl a_nl                      first order
             + (eta^2 K / 2q) sum_l h_l sum_{n in C_l} omega_nl^2 D_n(A)        ZO noise
             + L eta^2 [ K^2/2 sum_l |m_l|^2 + K/q sum_n sum_l omega_nl^2 s_nl ]     step length

with Gamma_l[n, m] = <grad_l f_n, grad_l f_m>, a_nl = sum_m p_m Gamma_l[m, n] = <grad_l f, grad_l f_n>,
D_n(A) = sum_{l in S_n} s_nl, s_nl = E_xi |grad_l F_n(w; xi)|^2, h_l = tr(H_ll), |m_l|^2 =
omega_l^T Gamma_l omega_l, omega_nl the protocol's per-block weights. With L = 0 (`smooth`) it is the
second-order prediction `Phi_taylor`, exact for one step on a quadratic up to terms the step-length
line bounds when 0 <= H <= L I (Theorem 4).

None of Gamma is visible in scalars of independent directions; all of it is in *shared* ones: when
every client evaluates the same Rademacher z on block l, on two independent minibatches (y^a, y^b),
E[y^a_n y^b_m] = <grad_l f_n, grad_l f_m> for every n, m (n = m included) and E[(y^a_n)^2] = s_nl.

Unbiased is not enough at affordable probe counts: each entry's error is ~sqrt(s_nl s_ml / P), and
minibatch noise makes s_nl many times |grad_l f_n|^2. The default estimator therefore pools the
blocks: the clients' Gram matrices share one shape across blocks up to a scale (Gamma_l ~ lambda_l
Gamma, section 15: per-example gradients are residual x Jacobian, and the clients differ in their
residuals, which every block sees), so all L blocks' probes estimate the one shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np


@dataclass(frozen=True)
class ProgressConstants:
    """What Phi needs, for N clients and L blocks, at the round's start."""

    gram: np.ndarray  # (L, N, N) <grad_l f_n, grad_l f_m>
    second: np.ndarray  # (N, L) s_nl = E_xi |grad_l F_n(w; xi)|^2
    curvature: np.ndarray  # (L,) h_l
    objective_weights: np.ndarray  # (N,) p_n in f = sum_n p_n f_n, summing to 1
    lr: float
    local_steps: int
    perturbations: int = 1
    smooth: float = 0.0  # L of the step-length term; 0: the second-order prediction Phi_taylor

    def __post_init__(self) -> None:
        L, N = self.gram.shape[0], self.gram.shape[1]
        if self.gram.shape != (L, N, N) or self.second.shape != (N, L) or self.curvature.shape != (L,):
            raise ValueError("gram (L, N, N), second (N, L) and curvature (L,) must agree")
        if self.objective_weights.shape != (N,) or not np.isclose(self.objective_weights.sum(), 1.0):
            raise ValueError("objective_weights must have one entry per client and sum to 1")

    def subset(self, rows: list[int]) -> ProgressConstants:
        """The constants of the clients `rows` (a round's participants), f re-weighted over them."""
        idx = np.asarray(rows, int)
        p = self.objective_weights[idx]
        return ProgressConstants(self.gram[:, idx][:, :, idx], self.second[idx], self.curvature, p / p.sum(),
                                 self.lr, self.local_steps, self.perturbations, self.smooth)

    @cached_property  # read by every batch of candidates a plan search evaluates
    def alignment(self) -> np.ndarray:
        """(N, L) a_nl = <grad_l f, grad_l f_n>: how much client n's gradient on block l helps f."""
        return np.einsum("m,lmn->nl", self.objective_weights, self.gram)


def aggregation_weights(A: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """omega (P, N, L): the protocol's weight of client n on block l, w_n / sum_{C_l} w (0 off C_l)."""
    A = np.asarray(A, float)
    w = np.ones(A.shape[-2]) if weights is None else np.asarray(weights, float)
    mass = np.einsum("...nl,n->...l", A, w)
    return A * w[:, None] / np.where(mass > 0, mass, 1.0)[..., None, :]


def one_round_change(A: np.ndarray, c: ProgressConstants, weights: np.ndarray | None = None) -> np.ndarray:
    """Phi for a batch of plans A (P, N, L) (or one plan (N, L): a scalar array): the predicted
    E f(w+) - f(w) over one round; lower is better. Uncovered blocks do not move and add nothing."""
    A = np.asarray(A, float)
    omega = aggregation_weights(A, weights)
    eta, K, q = c.lr, c.local_steps, c.perturbations
    D = np.einsum("...nl,nl->...n", A, c.second)
    first = -eta * K * np.einsum("...nl,nl->...", omega, c.alignment)
    noise = eta**2 * K / (2 * q) * np.einsum("...nl,l,...n->...", omega**2, c.curvature, D)
    mean_step = K**2 / 2 * np.einsum("...nl,lnm,...ml->...", omega, c.gram, omega)  # |m|^2
    own_step = K / q * np.einsum("...nl,nl->...", omega**2, c.second)
    return first + noise + c.smooth * eta**2 * (mean_step + own_step)


GRAM_ESTIMATORS = ("separable", "raw")


def gram_from_probes(ya: np.ndarray, yb: np.ndarray, estimator: str = "separable") -> tuple[np.ndarray, np.ndarray]:
    """(Gamma (L, N, N), s (N, L)) from shared-seed probe scalars ya, yb (L, P, N): probe p of block l
    evaluated by every client on its minibatch a and on an independent minibatch b. "raw": each
    block's average, unbiased up to O(mu) (section 14): cross-minibatch products see no minibatch
    noise, squares see all of it. "separable": that average made positive semi-definite and pooled
    over blocks (`separable_gram`, section 15)."""
    if estimator not in GRAM_ESTIMATORS:
        raise ValueError(f"unknown Gram estimator {estimator!r}; one of {', '.join(GRAM_ESTIMATORS)}")
    ya, yb = np.asarray(ya, float), np.asarray(yb, float)
    if ya.shape != yb.shape or ya.ndim != 3 or ya.shape[1] < 1:
        raise ValueError("probe scalars must be two (L, P, N) arrays of the same shape")
    P = ya.shape[1]
    cross = np.einsum("lpn,lpm->lnm", ya, yb) / P
    gram = (cross + cross.transpose(0, 2, 1)) / 2
    second = ((ya**2 + yb**2).mean(1) / 2).T
    return (separable_gram(gram) if estimator == "separable" else gram), second


def minibatch_variance_factor(batch: int, examples: np.ndarray) -> np.ndarray:
    """Var(mean gradient of a minibatch) / sigma^2 (sigma^2 the per-example variance, ddof 1) for a
    client of `examples` examples: without replacement (N - b) / (b (N - 1)), as data.sample_batch
    draws when b <= N, and (N - 1) / (N b) with replacement, as it draws when b > N."""
    n = np.asarray(examples, float)
    return np.where(batch <= n, (n - batch) / (batch * np.maximum(n - 1, 1)), (n - 1) / (n * batch))


def second_at_batch(second: np.ndarray, gram: np.ndarray, probe_batch: int, batch: int,
                    examples: np.ndarray) -> np.ndarray:
    """s_nl at the training minibatch size `batch` from the probes' s_nl at `probe_batch` (< every
    client's size): s(b) = |g_nl|^2 + (s(B) - |g_nl|^2) v(b) / v(B), v the variance factor above and
    |g_nl|^2 the Gram diagonal; the excess s(B) - |g|^2, pure minibatch noise, is floored at 0."""
    ratio = minibatch_variance_factor(batch, examples) / minibatch_variance_factor(probe_batch, examples)
    excess = np.clip(second - np.einsum("lnn->nl", gram), 0.0, None)
    return second + (ratio[:, None] - 1.0) * excess


def nearest_psd(gram: np.ndarray) -> np.ndarray:
    """Each (N, N) matrix of `gram` with its negative eigenvalues set to 0: the nearest Gram matrix
    in Frobenius norm (a noisy average of products need not be one)."""
    values, vectors = np.linalg.eigh((gram + np.swapaxes(gram, -1, -2)) / 2)
    return np.einsum("...ij,...j,...kj->...ik", vectors, np.clip(values, 0.0, None), vectors)


def separable_gram(gram: np.ndarray) -> np.ndarray:
    """lambda_l * G for a per-block estimate `gram` (L, N, N): G = sum_l Gamma_l^+ (the PSD parts)
    pools every block's probes into one client shape, lambda_l = tr Gamma_l^+ / tr G its per-block
    scale. Exact when the input is separable and PSD; zero where there is no signal."""
    psd = nearest_psd(np.asarray(gram, float))
    shape = psd.sum(0)
    total = np.trace(shape)
    scale = np.trace(psd, axis1=1, axis2=2) / total if total > 0 else np.zeros(len(psd))
    return scale[:, None, None] * shape[None]
