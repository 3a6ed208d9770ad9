"""The compiled CPU loop (rng_native.py and _rng_native.c) gives the torch path's bits: single streams at any length and
word offset, passes over many tensors with the small streams' z kept, a ZO step, and replay; and
it steps aside where it must (other dtypes, ZORBA_CPU_KERNEL=torch)."""

import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

from zorba.core import rng, rng_native, zo
from zorba.wire.keys import derive_key

pytestmark = pytest.mark.skipif(not rng_native.usable(), reason=f"compiled loop off: {rng_native.why_off()}")

SIZES = [1, 5, 31, 32, 33, 1000, 8191, 8192, 8193, 65_536, 147_456, (1 << 20) + 77, 3_000_001]


def _both(fn):
    """fn() once through the compiled loop and once through the torch path, from the same start."""
    compiled = fn()
    with rng_native.off():
        assert not rng_native.usable()
        reference = fn()
    assert rng_native.usable()
    return compiled, reference


@pytest.mark.parametrize("n", SIZES)
def test_single_stream_equals_torch_path(n):
    key, start = random.Random(n).getrandbits(64), torch.randn(n)

    def run():
        w = start.clone()
        rng.add_noise_(w, key, -3.7e-3)
        return w

    compiled, reference = _both(run)
    assert torch.equal(compiled, reference)
    assert not torch.equal(compiled, start)


@pytest.mark.parametrize("offset", [32, 64 * 1024, 32 * 12_345])
def test_word_offset_equals_torch_path(offset):
    start = torch.randn(70_001)

    def run():
        w = start.clone()
        rng.add_noise_(w, 99, 0.25, offset=offset)
        return w

    compiled, reference = _both(run)
    assert torch.equal(compiled, reference)


def test_kernel_matches_the_definition():
    """Element i is bit i % 32 of word i // 32's hash: -1 where set (independent of both paths' code)."""
    n, key = 1000, 123456789
    z = torch.zeros(n)
    rng_native.add_([z], [key], [1.0])
    words = rng._hash_counters(0, (n + 31) // 32, key, torch.device("cpu")).numpy().view(np.uint32)
    bits = (words[np.arange(n) // 32] >> (np.arange(n) % 32).astype(np.uint32)) & 1
    assert np.array_equal(z.numpy(), np.where(bits == 1, -1.0, 1.0).astype(np.float32))


def test_many_with_kept_small_z_equals_torch_path():
    gen = random.Random(3)
    large, small = [147_456, 589_824, (1 << 20) + 77], [384, 1, 33, 1536, 0]
    keys = [gen.getrandbits(64) for _ in large + small]
    scales = [0.5, -1e-3, 0.0] + [2.0, 0.0, -0.25, 1.0, 3.0]
    start = [torch.randn(n) for n in small + large]

    def run():
        w = [t.clone() for t in start]
        kept = rng.add_noise_many_keeping_(w, keys[3:] + keys[:3], scales[3:] + scales[:3], len(small))
        return w, kept

    (w1, kept1), (w2, kept2) = _both(run)
    assert all(torch.equal(a, b) for a, b in zip(w1, w2, strict=True))
    assert torch.equal(kept1, kept2)
    assert torch.equal(kept1, rng.packed_noise(small, keys[3:])[0])


@pytest.mark.parametrize("offsets", [None, [0, 3, 1000]])
def test_sequences_in_one_pass_equal_pass_by_pass(offsets):
    """A replayed round: each tensor's pairs in order, zero scales skipped (a -0.0 weight stays -0.0)."""
    gen = random.Random(2)
    sizes = [5, 8193, 100_003]
    start = [torch.randn(n) for n in sizes]
    start[0][1] = -0.0
    keys = [[gen.getrandbits(64) for _ in range(9)] for _ in sizes]
    scales = [[gen.choice([0.0, 1e-3, -2.5e-4, 0.3]) for _ in range(9)] for _ in sizes]
    scales[0][0] = 0.0

    def run():
        w = [t.clone() for t in start]
        rng.add_noise_sequences_(w, keys, scales, word_offsets=offsets)
        return w

    compiled, reference = _both(run)
    assert all(torch.equal(a, b) for a, b in zip(compiled, reference, strict=True))
    assert all(not torch.equal(a, b) for a, b in zip(compiled, start, strict=True))


def test_threads_cut_passes_at_words_and_give_the_same_bits(monkeypatch):
    items = [(1000, 70_001, 3, "a"), (9000, 5, 0, "b"), (20_000, 1_000_003, 10, "c")]
    parts = rng_native._split(items, 3, sum(i[1] for i in items))
    assert len(parts) == 3
    pieces = [p for part in parts for p in part]
    for address, numel, first_word, tag in items:  # each tensor covered once, in order, cut at words
        own = [p for p in pieces if p[3] == tag]
        assert sum(p[1] for p in own) == numel
        for p in own:
            offset = (p[0] - address) // 4
            assert offset % 32 == 0 and p[2] == first_word + offset // 32
    monkeypatch.setattr(rng_native, "_PARALLEL_MIN", 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        gen = random.Random(4)
        start = [torch.randn(n) for n in (31, 70_001, 1_000_003)]
        keys = [[gen.getrandbits(64) for _ in range(4)] for _ in start]
        scales = [[0.5, 0.0, -1e-3, 2e-3] for _ in start]

        def run():
            w = [t.clone() for t in start]
            rng.add_noise_many_(w, [k[0] for k in keys], [0.25, -0.5, 1e-3])
            rng.add_noise_sequences_(w, keys, scales)
            return w

        compiled, reference = _both(run)
        assert all(torch.equal(a, b) for a, b in zip(compiled, reference, strict=True))
    finally:
        torch.set_num_threads(threads)


def test_non_float32_weights_take_the_torch_path():
    w = torch.randn(70_000).to(torch.bfloat16)
    expected = w.clone()
    with rng_native.off():
        rng.add_noise_many_([expected], [7], [0.01])
    rng.add_noise_many_([w], [7], [0.01])
    assert torch.equal(w, expected)


def test_zo_step_and_replay_equal_torch_path():
    torch.manual_seed(0)
    shapes = [(384, 384), (384,), (1536, 384), (384,), (384, 1536)]
    start = [torch.randn(s) for s in shapes]
    blocks = {0: [0, 1], 1: [2, 3, 4]}

    def run():
        tensors = {b: [start[i].clone() for i in ids] for b, ids in blocks.items()}
        streams = zo._Streams(tensors, [0, 1], sseed=11, j=2, dist="rademacher")
        for scale in (1e-3, -2e-3, 1e-3 - 0.1):
            streams.add_(scale)
        keys = [[derive_key(5, p) for p in range(3)] for _ in tensors[1]]
        rng.add_noise_sequences_(tensors[1], keys, [[0.1, -0.2, 0.05]] * len(tensors[1]))
        return [t for b in blocks for t in tensors[b]]

    compiled, reference = _both(run)
    assert all(torch.equal(a, b) for a, b in zip(compiled, reference, strict=True))


def test_small_tensors_are_packed_for_the_torch_path_only():
    from zorba.core.packed import PackedSmallTensors

    small = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 4))]
    with PackedSmallTensors(small) as packed:
        assert packed.members == []  # a pass is one compiled call: nothing to gain
    with rng_native.off(), PackedSmallTensors(small) as packed:
        assert packed.members == small


def test_environment_variable_selects_torch_path():
    env = dict(os.environ, ZORBA_CPU_KERNEL="torch")
    code = "from zorba.core import rng_native; print(rng_native.usable())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_federated_rounds_equal_torch_path(tiny_models, data_dir):
    """Whole rounds (deferred tables, packed small tensors, server replay) give the same weights and
    the same uplink scalars through either path."""
    from zorba.federation.config import make_config
    from zorba.federation.runner import Runner, check_inputs

    cfg = make_config(model=str(tiny_models["bert"]), clients=2, rounds=2, local_steps=3, train_size=120,
                      planner="feasible-round-robin", block_fractions=(0.5,), data_dir=str(data_dir), lr=1e-3,
                      measure_memory=False, max_len=32)

    def run():
        runner = Runner(cfg, check_inputs(cfg))
        records = [runner.run_round() for _ in range(cfg.rounds)]
        weights = {n: p.detach().clone() for n, p in runner.state.lm.model.named_parameters()}
        return weights, [r["train_loss"] for r in records]

    (w1, loss1), (w2, loss2) = _both(run)
    assert loss1 == loss2
    assert w1.keys() == w2.keys() and all(torch.equal(w1[n], w2[n]) for n in w1)


def test_a_build_of_another_version_is_ignored(monkeypatch):
    monkeypatch.setattr(rng_native._rng_native, "VERSION", rng_native._VERSION + 1)
    assert "reinstall" in rng_native._why_off()
    monkeypatch.setattr(rng_native, "_rng_native", None)
    assert "not built" in rng_native._why_off()
