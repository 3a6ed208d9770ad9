"""The fast paths give exactly the values of the simple ones (speed itself is measured in benchmarks/)."""

import pytest
import torch

from zorba.core import rng
from zorba.core.zo import add_scaled_noise_, spsa_step
from zorba.wire.protocol import stream_key


def _reference_z(numel: int, key: int) -> torch.Tensor:
    """Element i = bit (i mod 32) of hash(i // 32), written out without the workspace machinery."""
    words = rng._hash_counters(0, (numel + 31) // 32, key, torch.device("cpu"))
    bits = (words[:, None] >> torch.arange(32, dtype=torch.int32)) & 1
    return (1 - 2 * bits).float().view(-1)[:numel]


@pytest.mark.parametrize("numel", [1, 31, 33, 1000, 40_000])
def test_workspace_generator_matches_bitwise_definition(numel):
    assert torch.equal(rng.noise(numel, 77), _reference_z(numel, 77))


def test_packed_small_tensors_equal_one_by_one(monkeypatch):
    shapes = [(5,), (32,), (7, 3), (1,), (64, 64), (20_000,)]
    ts = [torch.randn(s, dtype=torch.float32) for s in shapes]
    keys, scales = [11 + i for i in range(len(ts))], [0.25, -1.5, 3.0, 0.0, 1e-3, 2.0]
    one_by_one = [t.clone() for t in ts]
    for t, k, s in zip(one_by_one, keys, scales, strict=True):
        if s:
            rng.add_noise_(t, k, s)
    rng.add_noise_many_(ts, keys, scales)
    assert all(torch.equal(a, b) for a, b in zip(ts, one_by_one, strict=True))


def test_offset_streams_a_tensor_in_pieces():
    full, pieces = torch.randn(10_000), None
    pieces = full.clone()
    rng.add_noise_(full, 5, 0.5)
    for start in range(0, 10_000, 3200):
        rng.add_noise_(pieces[start : start + 3200], 5, 0.5, offset=start)
    assert torch.equal(full, pieces)
    with pytest.raises(ValueError, match="multiple of 32"):
        rng.add_noise_(pieces[:10], 5, 0.5, offset=3)


def test_gaussian_many_equals_single():
    a, b = torch.zeros(100), torch.zeros(100)
    rng.add_noise_many_([a], [3], [1.0], "gaussian")
    rng.add_noise_(b, 3, 1.0, "gaussian")
    assert torch.equal(a, b) and torch.equal(a, rng.noise(100, 3, "gaussian"))


def test_cache_z_and_regenerated_steps_are_bit_identical():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(3000, generator=g)

    def blocks():
        return [[torch.zeros(1000), torch.zeros(17)], [torch.zeros(1983)]]

    def loss_of(bs):
        return lambda: float(((torch.cat([t.view(-1) for b in bs for t in b]) - target) ** 2).sum())

    a, b = blocks(), blocks()
    for k in range(3):
        ra, _ = spsa_step(loss_of(a), a, [0, 1], sseed=k, mu=1e-2, lr=1e-3, q=2)
        rb, _ = spsa_step(loss_of(b), b, [0, 1], sseed=k, mu=1e-2, lr=1e-3, q=2, cache_z=True)
        assert ra == rb
    assert all(torch.equal(x, y) for xa, xb in zip(a, b, strict=True) for x, y in zip(xa, xb, strict=True))


def test_add_scaled_noise_touches_only_listed_blocks_with_their_streams():
    bs = [[torch.zeros(40)], [torch.zeros(50), torch.zeros(3)], [torch.zeros(9)]]
    add_scaled_noise_(bs, [1], 42, 0, {1: 2.0}, "rademacher")
    assert torch.equal(bs[1][1], 2.0 * rng.noise(3, stream_key(42, 0, 1, 1)))
    assert not bs[0][0].any() and not bs[2][0].any()
