import hashlib

import pytest
import torch

from zorba.core import rng
from zorba.wire.keys import DISTRIBUTIONS, derive_key

# Stored once; a GPU must print the same (benchmarks/gpu_check.py compares on a lent device).
GOLDEN_RADEMACHER = "6c9f090c840e5e7ab86abc0d318f80d0d8a6ad5a4495957891714d4208979f36"


def test_golden_hash_rademacher():
    assert rng.golden_digest() == GOLDEN_RADEMACHER


def test_rademacher_is_balanced_and_independent_across_keys():
    z1, z2 = rng.noise(200_000, 1), rng.noise(200_000, 2)
    assert set(z1.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z1.mean())) < 0.01
    assert abs(float((z1 * z2).mean())) < 0.01
    assert abs(float((z1[:-1] * z1[1:]).mean())) < 0.01  # neighbours (bits of one word) uncorrelated


def test_gaussian_moments():
    z = rng.noise(200_000, 3, "gaussian")
    assert abs(float(z.mean())) < 0.01
    assert abs(float(z.std()) - 1) < 0.01
    assert abs(float((z**4).mean()) - 3) < 0.1


@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_add_noise_matches_noise_across_chunk_boundaries(dist, monkeypatch):
    monkeypatch.setattr(rng, "_CHUNK", 64)  # force many chunks
    n = 1000
    expected = rng.noise(n, 9, dist)
    t = torch.zeros(n)
    rng.add_noise_(t, 9, 0.5, dist)
    assert torch.equal(t, 0.5 * expected)
    monkeypatch.undo()
    assert torch.equal(rng.noise(n, 9, dist), expected)  # chunking does not change the stream


def test_prefix_property_and_dtype():
    long, short = rng.noise(777, 5), rng.noise(100, 5)
    assert torch.equal(long[:100], short)
    t = torch.zeros(100, dtype=torch.float64)
    rng.add_noise_(t, 5, 1.0)
    assert torch.equal(t.float(), short)


def test_derive_key_distinguishes_tuples():
    keys = {derive_key(1, r, c, s) for r in range(5) for c in range(5) for s in range(5)}
    assert len(keys) == 125
    assert derive_key(1, 2) != derive_key(2, 1)


def test_unknown_distribution_rejected():
    with pytest.raises(ValueError, match="unknown perturbation distribution"):
        rng.add_noise_(torch.zeros(4), 1, 1.0, "uniform")


def test_digest_is_of_float32_bytes():
    z = rng.noise(1000, 20260427)
    assert hashlib.sha256(z.numpy().tobytes()).hexdigest() == GOLDEN_RADEMACHER
