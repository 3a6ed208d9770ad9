"""Small tensors packed into one buffer for a round (packed.py) and the numpy generator paths behind it:
the same z, scalars and weights as tensor-by-tensor adds, bit for bit."""

import random

import pytest
import torch

from zorba.core import rng, rng_native
from zorba.core.models import load_model, state_digest
from zorba.core.packed import PackedSmallTensors
from zorba.core.replica import Replica
from zorba.core.zo import spsa_step
from zorba.wire.protocol import stream_key, stream_keys


@pytest.fixture(autouse=True)
def _torch_path():
    """Packing serves rng.py's torch path only (with the compiled loop a pass is one call anyway)."""
    with rng_native.off():
        yield


def test_packed_noise_matches_each_stream_and_the_pack_layout():
    r = random.Random(0)
    for _ in range(20):
        sizes = [r.randint(1, 3000) for _ in range(r.randint(1, 30))]
        keys = [r.getrandbits(64) for _ in sizes]
        z, offsets = rng.packed_noise(sizes, keys)
        assert offsets == rng.pack_offsets(sizes)[0]
        for n, k, off in zip(sizes, keys, offsets, strict=True):
            assert torch.equal(z[32 * off : 32 * off + n], rng.noise(n, k))
        assert all(torch.equal(a, rng.noise(n, k)) for a, n, k in zip(rng.noise_small(sizes, keys), sizes, keys, strict=True))


def test_stream_keys_equal_stream_key_one_by_one():
    pairs = [(b, i) for b in range(5) for i in range(7)]
    assert stream_keys(2**63 + 5, 3, pairs) == [stream_key(2**63 + 5, 3, b, i) for b, i in pairs]


def _round(path, pack: bool, q: int, dist: str = "rademacher"):
    lm = load_model(str(path))
    rep = Replica(lm)
    blocks = list(range(rep.num_blocks))[1:]  # leave the embeddings out: some small tensors stay unpacked
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    loss = lambda: float(lm.model.base_model(input_ids=ids).last_hidden_state.square().mean())  # noqa: E731
    active = [t for b in blocks for t in rep.tensors[b]]
    with PackedSmallTensors(active if pack else []) as packed:
        packed_count = len(packed.members)
        reports = [spsa_step(loss, rep.tensors, blocks, s, 1e-3, 5e-2, q=q, dist=dist, packed=packed) for s in range(3)]
    return reports, state_digest(lm.model), packed_count, active


@pytest.mark.parametrize("family", ["bert", "opt"])
@pytest.mark.parametrize("q,dist", [(1, "rademacher"), (2, "rademacher"), (1, "gaussian")])
def test_packed_round_matches_unpacked_round_bit_for_bit(tiny_models, family, q, dist, monkeypatch):
    plain_reports, plain_digest, _, _ = _round(tiny_models[family], False, q, dist)
    calls = []
    monkeypatch.setattr(PackedSmallTensors, "add_", lambda self, z, s, add=PackedSmallTensors.add_: (calls.append(s), add(self, z, s)))
    reports, digest, packed_count, active = _round(tiny_models[family], True, q, dist)
    assert packed_count >= 2
    assert len(calls) == (3 * (4 * q - 1) if dist == "rademacher" else 0)  # passes of 3 steps (Gaussian: unpacked)
    assert reports == plain_reports
    assert digest == plain_digest
    storages = {t.untyped_storage().data_ptr() for t in active}
    assert len(storages) == len(active)  # after close every tensor owns its storage again


def test_only_small_fp32_tensors_are_packed():
    big, half = torch.zeros(1 << 17), torch.zeros(10, dtype=torch.bfloat16)
    small = [torch.nn.Parameter(torch.randn(5)), torch.nn.Parameter(torch.randn(3, 4))]
    before = [t.detach().clone() for t in small]
    with PackedSmallTensors([big, half, *small, small[0]]) as packed:
        assert packed.members == small
        assert small[0].untyped_storage().data_ptr() == small[1].untyped_storage().data_ptr()
        assert all(torch.equal(t, b) for t, b in zip(small, before, strict=True))
        assert packed.order([small[1], small[0]]) == [1, 0]
        assert packed.order([small[0]]) is None
