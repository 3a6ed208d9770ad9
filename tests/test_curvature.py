"""Curvature-weighted block sizes (planner/curvature.py): Hutchinson traces on known quadratics, the
weights left exactly as they were, and the runner's --curvature-sizes path."""

import numpy as np
import pytest
import torch

from zorba.config import make_config
from zorba.planner.curvature import block_curvature_traces, curvature_sizes
from zorba.runner import Inputs, Runner, read_inputs


def _quadratic(diagonal: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = [6, 3]
    blocks = [[torch.randn(4, generator=g, dtype=torch.float64), torch.randn(n - 4 if n > 4 else 2, generator=g,
                                                                             dtype=torch.float64)] for n in sizes]
    dim = sum(t.numel() for b in blocks for t in b)
    if diagonal:
        hess = torch.diag(torch.rand(dim, generator=g, dtype=torch.float64) * 5)
    else:
        m = torch.randn(dim, dim, generator=g, dtype=torch.float64)
        hess = m @ m.T / dim

    def loss() -> float:
        w = torch.cat([t for b in blocks for t in b])
        return float(0.5 * w @ hess @ w)

    bounds = np.cumsum([0] + [sum(t.numel() for t in b) for b in blocks])
    exact = [float(torch.trace(hess[a:b, a:b])) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return blocks, loss, np.array(exact)


def test_traces_are_exact_for_a_diagonal_hessian():
    blocks, loss, exact = _quadratic(diagonal=True)
    got = block_curvature_traces(loss, blocks, probes=2, mu=1e-3)
    np.testing.assert_allclose(got, exact, rtol=1e-6)  # z^T H z = tr(H) for every Rademacher z


def test_traces_are_unbiased_for_a_dense_hessian_and_weights_are_restored():
    blocks, loss, exact = _quadratic(diagonal=False, seed=1)
    before = [[t.clone() for t in b] for b in blocks]
    got = block_curvature_traces(loss, blocks, probes=400, mu=1e-3)
    np.testing.assert_allclose(got, exact, rtol=0.15)
    assert all(torch.equal(t, s) for b, sb in zip(blocks, before, strict=True) for t, s in zip(b, sb, strict=True))


def test_sizes_are_clipped_to_one_coordinate_and_the_block_size():
    np.testing.assert_array_equal(curvature_sizes([-3.0, 50.0, 1e9], [10, 100, 1000], smooth=2.0), [1, 25, 1000])
    with pytest.raises(ValueError):
        block_curvature_traces(lambda: 0.0, [[torch.zeros(3)]], probes=0)


@pytest.mark.parametrize("flag", ["curvature_sizes", "block_smoothness"])
def test_runner_uses_curvature_sizes_in_the_bound_planner(tiny_models, data_dir, flag):
    cfg = make_config(model=str(tiny_models["bert"]), clients=3, rounds=1, local_steps=1, train_size=48, planner="bound",
                      data_dir=str(data_dir), batch_size=8, max_len=24, measure_memory=False, **{flag: True})
    full = read_inputs(cfg)
    runner = Runner(cfg, Inputs(full.train, full.dev[:40], None))
    consts = runner.state.server.planner.prior
    assert np.all(consts.effective_sizes >= 1) and np.all(consts.effective_sizes <= consts.block_sizes)
    assert consts.effective_sizes.sum() < consts.block_sizes.sum()  # curvature, not coordinate counts
    if flag == "block_smoothness":  # measured L_l, the global L their maximum (Theorem 3)
        assert consts.block_smooth is not None and np.all(consts.block_smooth > 0)
        assert consts.smooth == consts.block_smooth.max() and consts.blockwise
    else:
        assert consts.block_smooth is None
    runner.run()
    assert runner.state.server.replica.digest() == runner.state.device.digest()
