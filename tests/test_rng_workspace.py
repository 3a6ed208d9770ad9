"""The CPU generator (numpy hash in the reused workspace, mid-sized tensors hashed in runs) gives the
same z bits as the definition: element i of stream `key` is bit (i mod 32) of lowbias32(lowbias32(
(i // 32) * G + key_lo) ^ key_hi), -1 where the bit is set. The reference below is written from that
definition in numpy int64, sharing no code with rng.py."""

import numpy as np
import pytest
import torch

from zorba.core import rng
from zorba.wire.keys import derive_key

KEYS = [0, 1, 20260427, derive_key(7, 3, 1), (1 << 64) - 1, 0x8000000080000000]
M32 = 0xFFFFFFFF


def _lowbias32(x: np.ndarray) -> np.ndarray:
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & M32
    return x ^ (x >> 16)


def reference_z(numel: int, key: int, offset: int = 0) -> torch.Tensor:
    """z(key)[offset : offset + numel] from the definition, float32."""
    elements = np.arange(offset, offset + numel, dtype=np.int64)
    words = elements >> 5
    x = _lowbias32((words * 0x9E3779B9 + (key & M32)) & M32)
    x = _lowbias32(x ^ (key >> 32 & M32))
    bit = (x >> (elements & 31)) & 1
    return torch.from_numpy(np.where(bit == 1, -1.0, 1.0).astype(np.float32))


@pytest.mark.parametrize("numel", [1, 31, 32, 33, 1000, 65535, 65536, 70_001, 147_456, (1 << 20) + 77])
def test_noise_matches_the_definition(numel):
    for key in KEYS[:3] if numel > 100_000 else KEYS:
        assert torch.equal(rng.noise(numel, key), reference_z(numel, key)), (numel, key)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("offset", [0, 32, 32 * 4097])
def test_add_noise_at_an_offset_matches_the_definition(dtype, offset):
    for numel, key in [(70_001, KEYS[3]), (200_000, KEYS[4]), (1000, KEYS[5])]:
        w = torch.randn(numel).to(dtype)
        expected = w.clone().add_(reference_z(numel, key, offset).to(dtype), alpha=0.37)
        rng.add_noise_(w, key, 0.37, offset=offset)
        assert torch.equal(w, expected), (numel, key, offset)


def _mixed_tensors(dtype: torch.dtype) -> list[torch.Tensor]:
    """Small (packed), mid-sized (hashed in runs) and larger-than-a-chunk tensors, shapes not all
    multiples of 32, so runs start at word boundaries after padding."""
    shapes = [(384,), (147_456,), (33,), (1536, 384), (70_001,), (5,), (384, 384), ((1 << 20) + 4096 + 3,), (98_304,)]
    return [torch.randn(s).to(dtype) for s in shapes]


def _expected(tensors, keys, scales):
    out = []
    for t, k, s in zip(tensors, keys, scales, strict=True):
        e = t.clone()
        if s != 0.0:
            e.view(-1).add_(reference_z(t.numel(), k).to(t.dtype), alpha=s)
        out.append(e)
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_add_noise_many_matches_the_definition(dtype):
    tensors = _mixed_tensors(dtype)
    keys = [derive_key(11, i) for i in range(len(tensors))]
    scales = [1e-3, -2e-3, 0.5, 0.0, 3.0, -1.0, 1e-3, 0.25, -0.75]
    expected = _expected(tensors, keys, scales)
    rng.add_noise_many_(tensors, keys, scales)
    for t, e in zip(tensors, expected, strict=True):
        assert torch.equal(t, e)


def test_runs_split_across_small_chunks(monkeypatch):
    """A chunk of 4096 elements (128 words) and no packing: runs fill and split the workspace, and a
    tensor larger than a chunk goes chunk by chunk; every tensor still gets its own stream."""
    monkeypatch.setattr(rng, "_CHUNK", 1 << 12)
    monkeypatch.setattr(rng, "PACK_LIMIT", 1)
    sizes = [100, 4096, 1, 2000, 2100, 4097, 31, 64, 9000, 1500, 1500, 1096]
    tensors = [torch.randn(n) for n in sizes]
    keys = KEYS + [derive_key(5, i) for i in range(len(sizes) - len(KEYS))]
    scales = [0.5 * (i + 1) for i in range(len(sizes))]
    expected = _expected(tensors, keys, scales)
    rng.add_noise_many_(tensors, keys, scales)
    for t, e in zip(tensors, expected, strict=True):
        assert torch.equal(t, e)


def test_workspace_hash_runs_equal_single_streams():
    ws = rng._workspace(torch.device("cpu"))
    runs = [(0, 5, KEYS[2]), (3, 100, KEYS[4]), (1 << 20, 1, KEYS[5]), (7, 4608, KEYS[3])]
    together = ws.runs_of_words(runs).clone()
    alone = torch.cat([ws.words(start, n, key).clone() for start, n, key in runs])
    assert torch.equal(together, alone)
    torch_path = torch.cat([rng._hash_words(torch.arange(s, s + n, dtype=torch.int64), [k])[0] for s, n, k in runs])
    assert torch.equal(together, torch_path)  # the int32 torch hash that GPUs run


def test_small_streams_and_views():
    sizes = [384, 100, 1536, 33, 64, 1]
    keys = [derive_key(3, i) for i in range(len(sizes))]
    for z, n, k in zip(rng.noise_small(sizes, keys), sizes, keys, strict=True):
        assert z.numel() == n and torch.equal(z, reference_z(n, k))


def test_torch_paths_that_gpus_take_give_the_same_words():
    """The int32 torch code that GPUs run (workspace words, packed small streams), run here on the
    CPU: the same bits as the numpy hash the CPU now takes."""
    ws = rng._Workspace(torch.device("cpu"))
    ws.on_cpu = False  # the torch branch of `words`
    cpu = rng._workspace(torch.device("cpu"))
    for start, n, key in [(0, 5, KEYS[4]), (12345, 4608, KEYS[3]), (1 << 30, 77, KEYS[5])]:
        assert torch.equal(ws.words(start, n, key), cpu.words(start, n, key))
    sizes, keys = (384, 100, 1536, 33), KEYS[:4]
    z, offsets = rng._packed_z(sizes, keys, torch.device("cpu"))
    for n, k, off in zip(sizes, keys, offsets, strict=True):
        assert torch.equal(z[32 * off : 32 * off + n], reference_z(n, k))


def test_reserve_workspace_skips_gpus_the_fused_kernel_serves(monkeypatch):
    """A GPU client with the fused kernel never uses the torch generator's scratch: none is reserved.
    Where the kernel is off, the scratch is reserved as on the CPU (checked on the CPU: no GPU here).
    A CPU the compiled loop serves reserves none either."""
    from zorba.core import rng_native, rng_triton

    if rng_native.usable():
        assert rng.reserve_workspace("cpu") is False
    monkeypatch.setattr(rng_native, "usable", lambda: False)

    made = []
    monkeypatch.setattr(rng, "_workspace", lambda device: made.append(device))
    monkeypatch.setattr(rng_triton, "usable", lambda device: True)
    assert rng.reserve_workspace("cuda:0") is False and made == []
    assert rng.reserve_workspace("cpu") is True and made == [torch.device("cpu")]  # CPU: the torch path
    monkeypatch.setattr(rng_triton, "usable", lambda device: False)
    assert rng.reserve_workspace("cuda:0") is True and made[-1] == torch.device("cuda:0")
