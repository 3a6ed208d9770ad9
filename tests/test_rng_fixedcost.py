"""The fast paths that cut a pass's fixed cost (docs/performance.md, "How a perturbation pass is computed") give the same bits
as the reference paths: the small streams' z hashed in front of the large ones' first chunk equals
packed_noise, the weights equal add_noise_many_ (itself checked against the definition in
test_rng_workspace.py), keys equal derive_key one by one, and ZO steps equal the reference path."""

import random

import pytest
import torch

from zorba.core import rng, zo
from zorba.wire.keys import derive_key, derive_keys

SMALL = [384, 1, 31, 32, 33, 1536, 0, 65535]


def _layouts():
    """(large sizes, small sizes): a MiniLM layer, a tensor spanning chunks, odd sizes, no large."""
    yield [147_456, 147_456, 589_824], [384, 384, 1536, 384]
    yield [(1 << 20) + 77, 70_001], SMALL
    yield [65_536, 100_003, 65_537], [7, 65_535, 3]
    yield [], [384, 5]
    yield [3_000_000], [768, 384, 384]


@pytest.mark.parametrize("chunk", [0, 1 << 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_packing_pass_equals_separate_generation(chunk, dtype, monkeypatch):
    if chunk:  # many chunks per pass, small streams filling most of the first
        monkeypatch.setattr(rng, "_CHUNK", chunk)
    gen = random.Random(5)
    for large, small in _layouts():
        if chunk and sum((n + 31) // 32 for n in small) > chunk // 32:
            continue
        keys = [gen.getrandbits(64) for _ in large]
        small_keys = [gen.getrandbits(64) for _ in small]
        scales = [0.37, 0.0, -1e-3][: len(large)] + [2.5] * max(0, len(large) - 3)
        weights = [torch.randn(n).to(dtype) for n in large]
        expected = [w.clone() for w in weights]
        rng.add_noise_many_(expected, keys, scales)
        small_scales = [(0.0 if i % 3 == 1 else -0.5 * i) for i in range(len(small))]  # zero: z kept, no add
        small_weights = [torch.randn(n).to(dtype) for n in small]
        expected += [w.clone() for w in small_weights]
        rng.add_noise_many_(expected[len(large) :], small_keys, small_scales)
        z = rng.add_noise_many_keeping_(small_weights + weights, small_keys + keys, small_scales + scales, len(small))
        assert all(torch.equal(a, b) for a, b in zip(weights + small_weights, expected, strict=True)), (large, small)
        assert torch.equal(z, rng.packed_noise(small, small_keys)[0]), (large, small)


def test_packing_pass_falls_back_when_the_small_streams_do_not_fit_a_chunk(monkeypatch):
    monkeypatch.setattr(rng, "_CHUNK", 1 << 10)  # 32 words: the small streams below need 34
    w = torch.randn(5000)
    expected = w.clone()
    rng.add_noise_many_([expected], [9], [0.5])
    small = [torch.zeros(1024), torch.zeros(40)]
    z = rng.add_noise_many_keeping_([*small, w], [1, 2, 9], [1.0, 1.0, 0.5], 2)
    assert torch.equal(w, expected) and torch.equal(z, rng.packed_noise([1024, 40], [1, 2])[0])
    assert torch.equal(torch.cat(small), torch.cat([rng.noise(1024, 1), rng.noise(40, 2)]))


def test_derive_keys_equal_derive_key_one_by_one():
    gen = random.Random(3)
    for width in (1, 2, 3):
        prefix = (gen.getrandbits(64), (1 << 64) - 1)
        suffixes = [tuple(gen.randrange(10_000) for _ in range(width)) for _ in range(40)]
        assert derive_keys(prefix, suffixes) == [derive_key(*prefix, *s) for s in suffixes]
        assert derive_keys(prefix, iter(suffixes)) == derive_keys(prefix, suffixes)
    assert derive_keys((1, 2), []) == []


def _blocks(dtype: torch.dtype) -> list[list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    sizes = [[70_000, 384, 384, 66_000, 33], [384, 90_000, 1536], [5, 7]]
    return [[torch.randn(n, generator=gen).to(dtype) for n in block] for block in sizes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_zo_passes_equal_the_reference_path(dtype):
    """A step (first pass making the small z, the others reusing it) and one isolated pass give the
    weights that one add_noise_ per tensor and per pass gives."""
    blocks = [0, 2]
    fast, ref = _blocks(dtype), _blocks(dtype)
    zo.add_scaled_noise_(fast, blocks, 11, 1, {0: 0.25, 2: -0.5}, "rademacher")
    streams = zo._Streams(fast, blocks, 12, 0, "rademacher")
    for scale in (1e-2, -2e-2, 3e-2):
        streams.add_(scale)
    for sseed, j, scales in [(11, 1, [0.25, -0.5]), (12, 0, [1e-2] * 2), (12, 0, [-2e-2] * 2), (12, 0, [3e-2] * 2)]:
        for b, scale in zip(blocks, scales, strict=True):
            for i, t in enumerate(ref[b]):
                rng.add_noise_(t, derive_key(sseed, j, b, i), scale)
    assert all(torch.equal(a, b) for fa, ra in zip(fast, ref, strict=True) for a, b in zip(fa, ra, strict=True))


def test_keeping_pass_on_parameters_that_require_grad():
    """In-place adds on leaves that require grad need grad mode off, and it is restored after."""
    w, b = torch.nn.Parameter(torch.randn(70_000)), torch.nn.Parameter(torch.randn(384))
    expected = [w.detach().clone(), b.detach().clone()]
    rng.add_noise_many_(expected, [4, 5], [0.1, 0.2])
    z = rng.add_noise_many_keeping_([b, w], [5, 4], [0.2, 0.1], 1)
    assert torch.is_grad_enabled() and w.requires_grad
    assert torch.equal(w.detach(), expected[0]) and torch.equal(b.detach(), expected[1])
    assert torch.equal(z, rng.packed_noise([384], [5])[0])
