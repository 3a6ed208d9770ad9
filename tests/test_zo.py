import torch

from zorba.core import rng
from zorba.core.zo import spsa_step
from zorba.wire.protocol import stream_key


def _quadratic(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    sizes = [5, 7, 3]
    dim = sum(sizes)
    m = torch.randn(dim, dim, generator=g, dtype=torch.float64)
    hess = m @ m.T / dim + torch.eye(dim, dtype=torch.float64)
    lin = torch.randn(dim, generator=g, dtype=torch.float64)
    blocks = [[torch.randn(s, generator=g, dtype=torch.float64)] for s in sizes]

    def flat():
        return torch.cat([b[0] for b in blocks])

    def loss():
        w = flat()
        return float(0.5 * w @ hess @ w + lin @ w)

    def grad():
        return hess @ flat() + lin

    return blocks, sizes, loss, grad, flat


def _z(sseed, j, block, size):
    return rng.noise(size, stream_key(sseed, j, block, 0)).double()


def test_scalar_is_the_directional_derivative_on_a_quadratic():
    blocks, sizes, loss, grad, _ = _quadratic()
    active = [0, 2]
    before = [b[0].clone() for b in blocks]
    gfull = grad()
    offsets = [0, 5, 12]
    step, _ = spsa_step(loss, blocks, active, sseed=42, mu=1e-3, lr=0.0)
    expected = sum(float(_z(42, 0, b, sizes[b]) @ gfull[offsets[b] : offsets[b] + sizes[b]]) for b in active)
    # Central differences are exact on quadratics: only float32 rounding of the scalar remains.
    assert abs(step.scalars[0] - expected) <= 1e-5 * max(1.0, abs(expected))
    for b in range(3):  # lr = 0: the perturbation is undone up to rounding, nothing else moves
        assert torch.allclose(blocks[b][0], before[b], atol=1e-12)


def test_average_of_estimates_is_the_block_gradient():
    blocks, sizes, loss, grad, _ = _quadratic(1)
    active = [1]
    gtrue = grad()[5:12]
    est = torch.zeros(7, dtype=torch.float64)
    n = 400
    for s in range(n):
        step, _ = spsa_step(loss, blocks, active, sseed=s, mu=1e-4, lr=0.0)
        est += step.scalars[0] * _z(s, 0, 1, 7)
    est /= n
    cos = float(est @ gtrue / (est.norm() * gtrue.norm()))
    assert cos > 0.97


def test_update_is_minus_lr_g_z_on_active_blocks_only():
    blocks, sizes, loss, grad, _ = _quadratic(2)
    before = [b[0].clone() for b in blocks]
    lr = 1e-2
    step, _ = spsa_step(loss, blocks, [1], sseed=7, mu=1e-3, lr=lr, q=2)
    expected = before[1] - lr / 2 * sum(g * _z(7, j, 1, 7) for j, g in enumerate(step.scalars))
    assert torch.allclose(blocks[1][0], expected, atol=1e-9)
    assert torch.equal(blocks[0][0], before[0]) and torch.equal(blocks[2][0], before[2])


def test_descent_on_a_quadratic():
    blocks, _, loss, _, _ = _quadratic(3)
    start = loss()
    for s in range(300):
        spsa_step(loss, blocks, [0, 1, 2], sseed=s, mu=1e-3, lr=2e-2)
    assert loss() < 0.5 * start
