"""The convergence bound (docs/theory.md): moment facts, monotonicity, and constant estimation."""

import itertools

import numpy as np
import pytest

from zorba.planner import BoundConstants, ScalarReport, bound, schedule_bound
from zorba.planner.bound import per_round_terms


def consts(L=4, **kw):
    d = np.array([5.0, 3.0, 8.0, 2.0, 6.0, 4.0])[:L]
    G2 = np.array([1.0, 0.5, 2.0, 0.3, 1.2, 0.8])[:L]
    kw.setdefault("lr", 0.01)
    return BoundConstants(d, G2, 0.5 * G2, **kw)


def terms(A, c):
    return per_round_terms(np.asarray(A, float)[None], c)


# --- estimator moments -------------------------------------------------------------------------------
def test_rademacher_fourth_moment_matches_the_closed_form():
    """E[(u.g)^2 u_l u_l^T] = |g|^2 I + 2 g_l g_l^T - 2 diag(g_l^2), exactly, over all sign vectors."""
    g = np.array([0.7, -1.3, 0.4, 2.0, -0.5])
    block = slice(1, 4)
    total = np.zeros((3, 3))
    for signs in itertools.product([-1.0, 1.0], repeat=len(g)):
        u = np.array(signs)
        total += (u @ g) ** 2 * np.outer(u[block], u[block])
    expected = (g @ g) * np.eye(3) + 2 * np.outer(g[block], g[block]) - 2 * np.diag(g[block] ** 2)
    np.testing.assert_allclose(total / 2 ** len(g), expected, rtol=1e-12)


def test_gaussian_fourth_moment_by_monte_carlo():
    rng = np.random.default_rng(0)
    g = np.array([0.7, -1.3, 0.4])
    u = rng.standard_normal((400_000, 3))
    est = ((u @ g) ** 2)[:, None, None] * u[:, :, None] * u[:, None, :]
    expected = (g @ g) * np.eye(3) + 2 * np.outer(g, g)
    np.testing.assert_allclose(est.mean(0), expected, atol=0.08)


def test_squared_scalar_estimates_active_gradient_mass():
    rng = np.random.default_rng(1)
    g = rng.standard_normal(50)
    u = rng.choice([-1.0, 1.0], size=(200_000, 50))
    assert np.mean((u @ g) ** 2) == pytest.approx(g @ g, rel=0.02)


# --- properties of J -------------------------------------------------------------------------------
def test_an_uncovered_block_makes_a_single_plan_infinite():
    c = consts()
    A = np.ones((3, 4), bool)
    assert np.isfinite(bound(A, c))
    A[:, 2] = False
    assert bound(A, c) == np.inf
    assert np.isfinite(bound(A, c, required=np.array([True, True, False, True])))


def test_full_coverage_has_no_bias_and_more_coverage_lowers_it():
    c = consts()
    A = np.zeros((4, 4), bool)
    A[:, 0] = A[0, 1] = A[1, 2] = A[2, 3] = True
    before = terms(A, c).bias[0]
    A[3, 1] = True  # a second client covers block 1
    after = terms(A, c).bias[0]
    assert after < before
    assert terms(np.ones((4, 4)), c).bias[0] == 0.0


def test_variance_grows_with_the_active_dimension():
    A = np.array([[1, 1, 0, 0], [0, 0, 1, 1]], bool)
    small = consts()
    large = BoundConstants(small.block_sizes * 3, small.G2, small.zeta2, lr=0.01)
    assert terms(A, large).variance[0] > terms(A, small).variance[0]


def test_an_extra_block_raises_the_noise_on_a_clients_other_blocks():
    """sigma2[n, l] = G_l^2 (1 + kappa/q) + d_l D_n / q: block 0's variance grows with D_n."""
    c = consts()
    narrow = np.array([[1, 1, 0, 0], [1, 0, 1, 1]], bool)
    wider = narrow.copy()
    wider[0, 2] = True
    assert terms(wider, c).variance_per_block[0, 0] > terms(narrow, c).variance_per_block[0, 0]


def test_equal_blocks_trade_bias_against_drift_not_variance():
    """docs/theory.md section 7: k blocks per client with equal coverage. V does not depend on k
    (Rademacher, q = 1), B = L zeta^2 (L/k - 1) falls, Dr = L k G^2 (1 + k d - 1) grows."""
    L = N = 12
    d, G2, z2 = 100.0, 1.0, 0.5
    c = BoundConstants(np.full(L, d), np.full(L, G2), np.full(L, z2), lr=1e-3, local_steps=5)
    for k in (1, 2, 3, 4, 6, 12):
        A = np.zeros((N, L), bool)
        for n in range(N):
            A[n, [(n * k + j) % L for j in range(k)]] = True
        t = terms(A, c)
        assert t.variance[0] == pytest.approx(L**2 * G2 / N * d)
        assert t.bias[0] == pytest.approx(L * z2 * (L / k - 1))
        assert t.drift[0] == pytest.approx(L * k * G2 * (1 + k * d - 1))


def test_drift_needs_more_than_one_local_step():
    A = np.ones((3, 4), bool)
    one, five = consts(local_steps=1), consts(local_steps=5)
    assert one.drift_factor == 0.0 and five.drift_factor == pytest.approx(4 * 9 / 6)
    t = terms(A, one)
    assert t.drift[0] > 0
    assert t.combined(five, 0.01)[0] > t.combined(one, 0.01)[0]


def test_a_window_divides_by_the_least_coverage_fraction():
    c = consts()
    first = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], bool)
    second = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], bool)
    assert bound(first, c) == np.inf
    window = schedule_bound([first, second], c)
    t = per_round_terms(np.array([first, second], float), c)
    eta = c.step_size(2)
    expected = (2 * c.f_gap / (eta * c.rounds) + t.combined(c, eta).mean()) / 0.5
    assert window == pytest.approx(expected)


def test_default_step_size_respects_the_theorem_condition():
    c = consts(lr=None, local_steps=4)
    eta = c.step_size(3)
    assert 0 < eta <= 1 / (2 * c.smooth * c.local_steps)


def test_unequal_weights_change_the_bound_and_equal_ones_do_not():
    A = np.array([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 1, 1]], bool)
    equal = bound(A, consts())
    assert bound(A, consts(weights=np.ones(3) * 7)) == pytest.approx(equal)
    assert bound(A, consts(weights=np.array([1.0, 2.0, 5.0]))) != pytest.approx(equal)


# --- estimating the constants ------------------------------------------------------------------------
def _reports(true_G2, rng, n_rows=60, per_row=None, clients=10):
    L = len(true_G2)
    out = []
    for r in range(n_rows):
        blocks = tuple(sorted(rng.choice(L, size=rng.integers(1, L + 1), replace=False).tolist()))
        D = true_G2[list(blocks)].sum()
        if per_row is None:  # noise-free: one "scalar" whose square is exactly D
            scalars = np.array([np.sqrt(D)])
        else:
            scalars = rng.normal(0.0, np.sqrt(D), per_row)
        out.append(ScalarReport(r % clients, blocks, scalars))
    return out


def test_nnls_recovers_block_second_moments_from_exact_masses():
    true_G2 = np.array([0.5, 2.0, 0.1, 1.0, 3.0])
    c = BoundConstants.from_block_sizes([10, 10, 10, 10, 10])
    reports = _reports(true_G2, np.random.default_rng(0))
    for r in reports:  # give every row heavy weight so the prior barely matters
        object.__setattr__(r, "scalars", np.repeat(r.scalars, 10_000))
    est = c.estimate_from_scalars(reports, ridge=1e-6)
    np.testing.assert_allclose(est.G2, true_G2, rtol=1e-4)


def test_nnls_recovers_block_second_moments_from_noisy_scalars():
    true_G2 = np.array([0.5, 2.0, 0.1, 1.0, 3.0])
    c = BoundConstants.from_block_sizes([10, 10, 10, 10, 10])
    est = c.estimate_from_scalars(_reports(true_G2, np.random.default_rng(1), per_row=4000))
    np.testing.assert_allclose(est.G2, true_G2, rtol=0.15, atol=0.03)


def test_without_reports_the_constants_do_not_change():
    c = BoundConstants.from_block_sizes([3, 4])
    assert c.estimate_from_scalars([]) is c


def test_heterogeneity_from_the_spread_of_client_norms():
    """Clients whose block-0 gradient norms differ (1 vs 3): zeta^2 >= var(norms) = 1."""
    rng = np.random.default_rng(2)
    c = BoundConstants.from_block_sizes([10, 10])
    reports = []
    for client, norm in enumerate([1.0, 3.0, 1.0, 3.0]):
        reports.append(ScalarReport(client, (0,), rng.normal(0, norm, 20_000)))
    est = c.estimate_from_scalars(reports)
    assert est.zeta2[0] == pytest.approx(1.0, rel=0.1)
    assert est.zeta2[1] == c.zeta2[1]  # nobody reported block 1: the prior stays
