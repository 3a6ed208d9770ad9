"""The generator and SPSA step as they were before the performance work (commit 11f71fa), kept only so
benchmarks can print before/after side by side in one run. Same z values, slower path."""

from __future__ import annotations

import torch

from zorba.core import rng
from zorba.wire.protocol import stream_key

_CHUNK = 1 << 22


def _hash_counters(start: int, count: int, key: int, device) -> torch.Tensor:
    k0, k1 = rng._i32(key & 0xFFFFFFFF), rng._i32(key >> 32)
    x = torch.arange(start, start + count, dtype=torch.int64, device=device).to(torch.int32)
    x *= rng._GOLDEN
    x += k0
    rng._lowbias32(x)
    x ^= k1
    return rng._lowbias32(x)


def _sign_table(device) -> torch.Tensor:
    bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1
    return (1 - 2 * bits).to(torch.float32).to(device)


@torch.no_grad()
def add_noise_(tensor: torch.Tensor, key: int, scale: float) -> None:
    flat = tensor.view(-1)
    table = _sign_table(flat.device)
    for start in range(0, flat.numel(), _CHUNK):
        n = min(_CHUNK, flat.numel() - start)
        words = _hash_counters(start // 32, (n + 31) // 32, key, flat.device)
        z = torch.nn.functional.embedding(words.view(torch.uint8).to(torch.int32), table).view(-1)[:n]
        flat[start : start + n].add_(z, alpha=scale)


def shift(tensors, blocks, sseed: int, j: int, scale: float) -> None:
    for b in blocks:
        for i, t in enumerate(tensors[b]):
            add_noise_(t, stream_key(sseed, j, b, i), scale)


def spsa_step(loss, tensors, blocks, sseed: int, mu: float, lr: float) -> None:
    blocks = sorted(blocks)
    shift(tensors, blocks, sseed, 0, mu)
    plus = loss()
    shift(tensors, blocks, sseed, 0, -2 * mu)
    minus = loss()
    shift(tensors, blocks, sseed, 0, mu - lr * (plus - minus) / (2 * mu))
