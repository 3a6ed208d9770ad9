"""The progress objective Phi (planner/progress.py, docs/theory.md section 14) against exact
expectations, and the shared-seed probe estimator (zorba/probes.py) against known gradients."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from zorba.planner.progress import (
    ProgressConstants,
    aggregation_weights,
    gram_from_probes,
    minibatch_variance_factor,
    nearest_psd,
    one_round_change,
    second_at_batch,
    separable_gram,
)
from zorba.probes import probe_batches, probe_block, probe_seed
from zorba.zo import add_scaled_noise_

BLOCK = 2  # coordinates per block in the quadratic instances


def quadratic(seed: int, N: int = 2, L: int = 3, dense: bool = False):
    """f_n(w) = 1/2 (w - c_n)^T H (w - c_n) at w = 0: gradients g_n = -H c_n, deterministic; H
    diagonal or a dense positive definite matrix."""
    rng = np.random.default_rng(seed)
    H = np.diag(rng.uniform(0.5, 2.0, L * BLOCK))
    if dense:
        Q, _ = np.linalg.qr(rng.normal(size=(L * BLOCK, L * BLOCK)))
        H = Q @ H @ Q.T
    g = -rng.normal(size=(N, L * BLOCK)) @ H
    p = rng.dirichlet(np.ones(N))
    return H, g, p


def exact_change(A: np.ndarray, H: np.ndarray, g: np.ndarray, p: np.ndarray, eta: float) -> float:
    """E f(w+) - f(w) for one round (K = q = 1, Rademacher, equal aggregation weights), enumerating
    every client's sign vector: f is quadratic, so second order is exact."""
    N, L = A.shape
    omega = aggregation_weights(A)
    grad = p @ g
    per_client = []
    for n in range(N):
        coords = np.repeat(A[n].astype(bool), BLOCK)
        steps = []
        for signs in itertools.product((-1.0, 1.0), repeat=int(coords.sum())):
            u = np.zeros(L * BLOCK)
            u[coords] = signs
            scale = np.repeat(omega[n], BLOCK)
            steps.append(-eta * (u @ g[n]) * u * scale)  # client n's contribution to the server's move
        per_client.append(np.array(steps))
    total = 0.0
    for combo in itertools.product(*[range(len(s)) for s in per_client]):
        delta = sum(per_client[n][i] for n, i in enumerate(combo))
        total += grad @ delta + 0.5 * delta @ H @ delta
    return total / np.prod([len(s) for s in per_client])


def constants(H, g, p, eta: float, smooth: float, L: int = 3) -> ProgressConstants:
    gb = g.reshape(len(g), L, BLOCK)
    gram = np.einsum("nlb,mlb->lnm", gb, gb)
    second = (gb**2).sum(-1)
    curvature = np.array([np.trace(H[b * BLOCK : (b + 1) * BLOCK, b * BLOCK : (b + 1) * BLOCK]) for b in range(L)])
    return ProgressConstants(gram, second, curvature, p, eta, 1, 1, smooth)


def remainder(A, H, g, eta: float) -> float:
    """R of Theorem 4 (deterministic gradients): what Phi_taylor leaves out."""
    omega = np.repeat(aggregation_weights(A), BLOCK, axis=1)
    m = (omega * g).sum(0)
    own = [omega[n] * g[n] for n in range(len(g))]
    diag = [np.diag(H) * omega[n] ** 2 * (g[n] * np.repeat(A[n], BLOCK)) ** 2 for n in range(len(g))]
    cross = sum(v @ H @ v - d.sum() for v, d in zip(own, diag, strict=True))
    return 0.5 * eta**2 * (m @ H @ m - sum(v @ H @ v for v in own) + 2 * cross)


PLANS = [np.array(a, float) for a in ([[1, 1, 1], [1, 1, 1]], [[1, 0, 1], [0, 1, 1]], [[1, 1, 0], [0, 0, 1]],
                                        [[0, 1, 0], [1, 0, 0]], [[1, 1, 1], [0, 0, 0]])]


@pytest.mark.parametrize("seed,dense", [(0, False), (1, False), (2, True), (3, True)])
def test_taylor_phi_is_exact_up_to_the_remainder_of_theorem_4(seed, dense):
    H, g, p = quadratic(seed, dense=dense)
    eta = 0.05
    c = constants(H, g, p, eta, smooth=0.0)
    for A in PLANS:
        predicted = float(one_round_change(A, c)) + remainder(A, H, g, eta)
        assert exact_change(A, H, g, p, eta) == pytest.approx(predicted, rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("seed,dense", [(0, False), (1, False), (2, True), (3, True)])
def test_phi_with_the_smoothness_constant_bounds_the_exact_change(seed, dense):
    H, g, p = quadratic(seed, dense=dense)
    eta = 0.05
    c = constants(H, g, p, eta, smooth=float(np.linalg.eigvalsh(H).max()))
    for A in PLANS:
        assert exact_change(A, H, g, p, eta) <= float(one_round_change(A, c)) + 1e-14


def test_phi_batches_plans_and_charges_nothing_for_uncovered_blocks():
    H, g, p = quadratic(3)
    c = constants(H, g, p, 0.05, smooth=1.0)
    batch = one_round_change(np.stack(PLANS), c)
    assert batch.shape == (len(PLANS),)
    assert np.allclose(batch, [float(one_round_change(A, c)) for A in PLANS])
    assert float(one_round_change(np.zeros((2, 3)), c)) == 0.0


def test_a_skewed_covering_client_makes_phi_rise():
    """Two clients with opposite gradients on a block: the block held by the one that disagrees
    with the global gradient raises f, which Phi predicts and the polarised bound cannot (both
    covering sets have the same coverage)."""
    g = np.array([[3.0, 0.0], [-1.0, 0.0]])  # one block of two coordinates, two clients
    p = np.array([0.5, 0.5])
    gram = (g @ g.T)[None]
    c = ProgressConstants(gram, (g**2).sum(1)[:, None], np.array([2.0]), p, 0.01, 1, 1, 1.0)
    good, bad = np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]])
    assert float(one_round_change(good, c)) < 0 < float(one_round_change(bad, c))


def test_gram_from_probes_recovers_the_gram_matrix():
    """Synthetic probes: y = z . (g_n + minibatch noise), shared z, independent noise for a and b."""
    rng = np.random.default_rng(0)
    L, N, d, P = 2, 3, 8, 20000
    g = rng.normal(size=(L, N, d))
    noise = 1.5
    z = rng.choice([-1.0, 1.0], size=(L, P, d))
    ya = np.einsum("lpd,lnd->lpn", z, g) + noise * np.einsum("lpd,lpnd->lpn", z, rng.normal(size=(L, P, N, d)))
    yb = np.einsum("lpd,lnd->lpn", z, g) + noise * np.einsum("lpd,lpnd->lpn", z, rng.normal(size=(L, P, N, d)))
    gram, second = gram_from_probes(ya, yb, "raw")
    true = np.einsum("lnd,lmd->lnm", g, g)
    scale = np.abs(true).max()
    assert np.abs(gram - true).max() < 0.1 * scale
    assert np.allclose(second, (np.einsum("lnd->nl", g**2) + noise**2 * d), rtol=0.05)
    with pytest.raises(ValueError):
        gram_from_probes(ya, yb[:, :-1])
    with pytest.raises(ValueError, match="unknown Gram estimator"):
        gram_from_probes(ya, yb, "pooled")


def separable_probes(rng, L: int, N: int, d: int, P: int, noise: float):
    """Probe scalars of a separable truth: client n's gradient on block l is sqrt(lambda_l) Q_l u_n
    (Q_l orthonormal columns), so Gamma_l = lambda_l U U^T exactly; minibatch noise as large as
    (about twice |g|^2 here; several times under label skew)."""
    lam = rng.uniform(0.2, 2.0, size=L)
    U = rng.normal(size=(N, 3))
    Q = np.stack([np.linalg.qr(rng.normal(size=(d, 3)))[0] for _ in range(L)])
    g = np.sqrt(lam)[:, None, None] * np.einsum("ldk,nk->lnd", Q, U)
    z = rng.choice([-1.0, 1.0], size=(L, P, d))
    ys = [np.einsum("lpd,lnd->lpn", z, g) + noise * np.einsum("lpd,lpnd->lpn", z, rng.normal(size=(L, P, N, d)))
          for _ in range(2)]
    return ys, lam[:, None, None] * (U @ U.T)[None]


def test_separable_gram_is_exact_on_separable_input_and_psd():
    rng = np.random.default_rng(3)
    U = rng.normal(size=(4, 2))
    true = np.array([0.5, 2.0, 1.0])[:, None, None] * (U @ U.T)[None]
    assert np.allclose(separable_gram(true), true)
    noisy = true + rng.normal(scale=1.0, size=true.shape)
    assert np.linalg.eigvalsh(nearest_psd(noisy)).min() > -1e-9
    assert np.linalg.eigvalsh(separable_gram(noisy)).min() > -1e-9
    assert np.allclose(separable_gram(-np.eye(3)[None].repeat(2, 0)), 0.0)  # no signal: no shape


def test_separable_estimate_beats_per_block_averages_at_few_probes():
    """The reason it is the default: at 16 probes with heavy minibatch noise, pooling L = 7 blocks
    into one client shape cuts the Gram error (Frobenius, relative) on every one of 5 draws, and the
    alignment a_nl (what Phi's first-order line reads) correlates better with the truth."""
    for seed in range(5):
        rng = np.random.default_rng(seed)
        (ya, yb), true = separable_probes(rng, L=7, N=5, d=40, P=16, noise=0.25)
        err = {e: np.linalg.norm(gram_from_probes(ya, yb, e)[0] - true) / np.linalg.norm(true)
               for e in ("raw", "separable")}
        corr = {e: np.corrcoef(gram_from_probes(ya, yb, e)[0].sum(1).ravel(), true.sum(1).ravel())[0, 1]
                for e in ("raw", "separable")}
        assert err["separable"] < 0.7 * err["raw"]
        assert corr["separable"] > corr["raw"]


def test_second_moments_move_to_the_training_batch_size():
    """Per-example gradients e_i around g on N examples: s at batch b is |g|^2 + the minibatch mean's
    variance, for b drawn without replacement; from the value at B, second_at_batch recovers it."""
    rng = np.random.default_rng(0)
    N, d = 40, 6
    e = rng.normal(size=(N, d)) + 0.3
    g = e.mean(0)
    sigma2 = ((e - g) ** 2).sum(1).sum() / (N - 1)

    def s_at(b):
        return g @ g + sigma2 * minibatch_variance_factor(b, np.array([N]))[0]

    brute = np.mean([((e[rng.choice(N, 8, replace=False)].mean(0)) ** 2).sum() for _ in range(40000)])
    assert brute == pytest.approx(s_at(8), rel=0.02)
    gram = np.array([[[g @ g]]])
    moved = second_at_batch(np.array([[s_at(16)]]), gram, 16, 8, np.array([N]))
    assert moved[0, 0] == pytest.approx(s_at(8))
    assert second_at_batch(np.array([[s_at(16)]]), gram, 16, 16, np.array([N]))[0, 0] == pytest.approx(s_at(16))


def test_probe_block_measures_directional_derivatives_and_restores_bits():
    torch.manual_seed(0)
    tensors = [[torch.randn(5, 3), torch.randn(3)], [torch.randn(4)]]
    data = torch.randn(6, 5)
    saved = [[t.clone() for t in block] for block in tensors]

    def loss(batch):
        x = data[torch.as_tensor(batch)]
        return float((x @ tensors[0][0] + tensors[0][1]).tanh().sum() * tensors[1][0].sum())

    batches = [np.array([0, 1]), np.array([2, 3]), np.array([0, 1]), np.array([4, 5])]
    ya, yb = probe_block(loss, tensors, 0, probe_seed(7, 0), batches, 1e-3)
    for block, old in zip(tensors, saved, strict=True):
        assert all(torch.equal(t, s) for t, s in zip(block, old, strict=True))
    for p, (a, b) in enumerate(zip(batches[::2], batches[1::2], strict=True)):
        z = [torch.zeros_like(t) for t in tensors[0]]
        add_scaled_noise_([z], [0], probe_seed(7, 0), p, {0: 1.0}, "rademacher")
        w = [t.clone().requires_grad_(True) for t in tensors[0]]
        for batch, y in ((a, ya[p]), (b, yb[p])):
            x = data[torch.as_tensor(batch)]
            val = (x @ w[0] + w[1]).tanh().sum() * tensors[1][0].sum()
            grads = torch.autograd.grad(val, w)
            directional = sum(float((gr * zz).sum()) for gr, zz in zip(grads, z, strict=True))
            assert y == pytest.approx(directional, rel=1e-2, abs=1e-3)


def test_probe_seeds_are_shared_by_clients_and_batches_are_not():
    assert probe_seed(5, 1) == probe_seed(5, 1) != probe_seed(5, 2)
    idx = np.arange(100)
    one, two = probe_batches(idx, 8, 5, 0, 3), probe_batches(idx, 8, 5, 1, 3)
    assert len(one) == 6 and all(len(b) == 8 for b in one)
    assert not np.array_equal(one[0], two[0])
    assert len(set(one[0])) == 8  # within a minibatch, no example twice
    small = probe_batches(np.arange(5), 8, 5, 0, 2)
    assert all(sorted(b) == list(range(5)) for b in small)  # capped at the client's data


def random_progress(N: int, L: int, seed: int, lr: float = 1e-3) -> ProgressConstants:
    """Label-skew-like clients: a shared gradient direction plus a large client-specific one."""
    rng = np.random.default_rng(seed)
    common = rng.normal(size=(L, 6))
    g = common[None] + 2.0 * rng.normal(size=(N, L, 6))
    gram = np.einsum("nld,mld->lnm", g, g)
    second = (g**2).sum(-1) + rng.uniform(1, 20, (N, L))
    return ProgressConstants(gram, second, rng.uniform(50, 400, L), rng.dirichlet(np.ones(N)), lr, 5, 1, 50.0)


def test_progress_search_stays_feasible_never_loses_to_its_start_and_its_gap_is_small():
    from zorba.planner.instances import transformer_instance
    from zorba.planner.problem import Problem
    from zorba.planner.progress_search import progress_search
    from zorba.planner.solve import _all_feasible_plans, solve_exact

    gaps = []
    for seed in range(12):
        N, L = 2 + seed % 2, 3 + seed % 3
        consts, mem, budgets = transformer_instance(N, L, seed=seed)
        problem = Problem(consts, mem, budgets)
        start = solve_exact(consts, mem, budgets).A
        pc = random_progress(N, L, seed)
        A = progress_search(problem, start, pc)
        assert np.all(mem.client_memory(A) <= budgets * (1 + 1e-12)) and A.any(0).all() and A.any(1).all()
        assert float(one_round_change(A, pc)) <= float(one_round_change(start, pc)) + 1e-15
        every = _all_feasible_plans(problem)
        every = every[every.any(1).all(-1)]
        best = float(one_round_change(every, pc).min())
        gaps.append((float(one_round_change(A, pc)) - best) / abs(best))
    print("gaps to brute force:", np.round(gaps, 4).tolist())
    assert max(gaps) < 1e-9, gaps  # pair moves reach the optimum on every one of these instances


def test_a_run_with_probes_plans_by_progress_and_records_the_probes(tiny_models, tmp_path, zorba):
    """`zorba run --probes`: clients probe before round 0 (forwards only), the planner's plans come
    from the progress search, stay within budget and cover every block, and result.json says what
    the probes cost; probes with another planner are one clear error."""
    import json

    out = tmp_path / "run"
    r = zorba("run", "--model", str(tiny_models["bert"]), "--clients", "3", "--rounds", "2", "--local-steps", "1",
              "--planner", "bound", "--train-size", "120", "--probes", "2", "--probe-batch", "4", "--no-measure-memory", "--out", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "result.json").read_text())
    L = len(result["blocks"])
    assert result["probes"]["forwards_per_client"] == 4 * 2 * L
    assert result["probes"]["estimator"] == "separable"
    assert np.asarray(result["probes"]["alignment"]).shape == (3, L)
    assert result["clients_in_sync"]
    for h in result["history"]:
        assert set().union(*[set(b) for b in h["blocks"].values()]) == set(range(L))
    bad = zorba("run", "--model", str(tiny_models["bert"]), "--planner", "all", "--probes", "2", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "probes" in bad.stderr and "Traceback" not in bad.stderr
    assert not (tmp_path / "x").exists()
    whole = zorba("run", "--model", str(tiny_models["bert"]), "--clients", "3", "--train-size", "120", "--planner", "bound", "--probes", "2",
                  "--probe-batch", "500", "--no-measure-memory", "--out", str(tmp_path / "y"))
    assert whole.returncode == 2 and "--probe-batch 500 is not below client" in whole.stderr
    assert "Traceback" not in whole.stderr and not (tmp_path / "y").exists()


def test_progress_search_scales_to_many_blocks_with_one_block_moves():
    """Above MAX_ENUMERATED_BLOCKS a client's options are its one-block neighbours: no 2^L
    enumeration, the constraints still hold and Phi does not get worse than the start's."""
    from zorba.planner.instances import transformer_instance
    from zorba.planner.problem import Problem
    from zorba.planner.progress_search import MAX_ENUMERATED_BLOCKS, progress_search
    from zorba.planner.solve import solve_heuristic

    N, L = 40, MAX_ENUMERATED_BLOCKS + 8
    consts, mem, budgets = transformer_instance(N, L, seed=1)
    problem = Problem(consts, mem, budgets)
    start = solve_heuristic(consts, mem, budgets, seed=0).A
    pc = random_progress(N, L, seed=1)
    A = progress_search(problem, start, pc, seconds=20.0)
    assert np.all(mem.client_memory(A) <= budgets * (1 + 1e-12)) and A.any(0).all() and A.any(1).all()
    assert float(one_round_change(A, pc)) < float(one_round_change(start, pc))


def test_probes_of_a_real_model_estimate_the_first_order_gram_matrix(tiny_models, data_dir):
    """End to end on a tiny BERT: forward-only shared-seed probes (probe_client, as clients run them)
    against the client Gram matrix from backprop on each client's whole data."""
    from zorba.blocks import block_tensors
    from zorba.client import TokenizedData
    from zorba.methods.grad_loss import loss_with_grad
    from zorba.models import load_model
    from zorba.precision import make_client_replica
    from zorba.probes import probe_client
    from zorba.scoring import Scorer
    from zorba.tasks import get_task, read_examples

    lm = load_model(str(tiny_models["bert"]))
    scorer = Scorer(lm, get_task("sst2"), 32)
    examples = read_examples(data_dir / "sst2" / "train.tsv", get_task("sst2"))[:48]
    data = TokenizedData(scorer.encode(examples), [e.label for e in examples])
    parts = [np.arange(0, 24), np.arange(24, 48)]
    tensors = block_tensors(lm.model, lm.blocks)
    grads = []
    for part in parts:
        for t in (t for b in tensors for t in b):
            t.requires_grad_(True)
            t.grad = None
        loss_with_grad(scorer, lm.model, [data.ids[i] for i in part], [data.labels[i] for i in part]).backward()
        grads.append([torch.cat([t.grad.reshape(-1) for t in b]) for b in tensors])
        for t in (t for b in tensors for t in b):
            t.requires_grad_(False)
    true = np.array([[[float(gn[b] @ gm[b]) for gm in grads] for gn in grads] for b in range(len(tensors))])
    replica = make_client_replica(lm, "fp32")
    probes = [probe_client(replica, part, scorer, data, 3, n, 150, 12, 1e-3) for n, part in enumerate(parts)]
    gram, _ = gram_from_probes(np.stack([a for a, _ in probes], -1), np.stack([b for _, b in probes], -1), "raw")
    corr = np.corrcoef(true.ravel(), gram.ravel())[0, 1]
    print(f"probed vs first-order Gram: correlation {corr:.3f}")
    assert corr > 0.9
