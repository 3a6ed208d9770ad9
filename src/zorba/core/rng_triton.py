"""Fused Rademacher perturbation for GPUs: one Triton kernel applies w += s * z to many tensors.

rng.py builds z from torch ops: a dozen small kernels per chunk plus one add per tensor. On a CPU
that is fast; on a GPU every op is a kernel launch of a few microseconds, so a ZO step over ~100
tensors spent most of its time launching (docs/gpu/perf-h200.json: step / 2 forwards 5.7-6.0 on an
H200). This kernel computes the very same z (element i of stream (k0, k1) is bit i % 32 of
lowbias32(lowbias32((i // 32) * G + k0) ^ k1), +1 for a clear bit, -1 for a set one) inside one
launch for all tensors of a pass, reading and writing each weight once.

It also takes a *sequence* of (key, scale) pairs per tensor and applies them in order in registers,
rounding to the tensor's dtype after every add exactly as separate `add_` calls would: replaying a
whole round on a block is one launch and one pass over memory, still bit-identical to the torch path
(tests/test_rng_fused.py checks this with Triton's CPU interpreter; benchmarks/gpu/perf.py on a GPU).

Used automatically for CUDA tensors when Triton is importable; `ZORBA_FUSED_RNG=0` turns it off.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

try:  # Triton ships with CUDA builds of torch; CPU-only installs run rng.py's torch path instead
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the install
    triton = None

_WORDS = 64  # 32-bit words per program: 2048 elements, a [64, 32] tile
launches = 0  # kernel launches so far (tests check that the fused path really ran)


_disabled: str | None = None  # why the fused path was turned off in this process, if it was


def enabled() -> bool:
    return triton is not None and _disabled is None and os.environ.get("ZORBA_FUSED_RNG", "1") != "0"


def disable(reason: str) -> None:
    """Turn the fused path off for this process (its kernel failed to build on this machine)."""
    global _disabled
    _disabled = reason
    warnings.warn(f"fused Triton perturbation disabled, using torch ops: {reason[:300]}", stacklevel=3)


def usable(device: torch.device) -> bool:
    """The fused path runs on CUDA devices; the interpreter (TRITON_INTERPRET=1) also runs it on CPU."""
    if not enabled():
        return False
    return device.type == "cuda" or (device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1")


if triton is not None:

    @triton.jit
    def _lowbias32(x):
        # x is uint32: right shifts are logical and products wrap modulo 2^32, as in rng._lowbias32
        x ^= x >> 16
        x *= 0x7FEB352D
        x ^= x >> 15
        x *= 0x846CA68B
        x ^= x >> 16
        return x

    @triton.jit
    def _round_to_bf16(x):
        # Round to nearest even on the bits: the interpreter's own fp32 -> bf16 cast truncates, so the
        # CPU test and the GPU would otherwise round differently (NaN and inf stay NaN and inf).
        bits = x.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _rademacher_kernel(table, prog_tensor, prog_word, pairs, n_pairs, DTYPE: tl.constexpr,
                           ROUND: tl.constexpr, WORDS: tl.constexpr):
        # table: int64 (ptr, numel, first stream word) per tensor; pairs: int32 (k0, k1, scale bits)
        # per tensor and pair; each program owns WORDS words (WORDS * 32 elements) of one tensor.
        pid = tl.program_id(0)
        t = tl.load(prog_tensor + pid).to(tl.int64)
        ptr = tl.load(table + 3 * t).to(tl.pointer_type(DTYPE))
        numel = tl.load(table + 3 * t + 1)
        local = tl.load(prog_word + pid).to(tl.int64) + tl.arange(0, WORDS).to(tl.int64)
        counter = (tl.load(table + 3 * t + 2) + local).to(tl.uint32)  # word index mod 2^32
        lanes = tl.arange(0, 32)
        offs = local[:, None] * 32 + lanes[None, :]
        mask = offs < numel
        w = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32)
        p = 0
        while p < n_pairs:  # a while loop: Triton's CPU interpreter cannot range() over an argument
            base = (t * n_pairs + p) * 3
            k0 = tl.load(pairs + base).to(tl.uint32, bitcast=True)
            k1 = tl.load(pairs + base + 1).to(tl.uint32, bitcast=True)
            s = tl.load(pairs + base + 2).to(tl.float32, bitcast=True)
            x = _lowbias32(_lowbias32(counter * 0x9E3779B9 + k0) ^ k1)
            bit = (x[:, None] >> lanes[None, :].to(tl.uint32)) & 1
            new = w + s * (1.0 - 2.0 * bit.to(tl.float32))  # s * (+-1) is exact: one rounding
            if ROUND:  # bf16 weights round after every add, like separate add_ calls
                new = _round_to_bf16(new)
            w = tl.where(s != 0.0, new, w)  # a zero scale is skipped, as rng.add_noise_many_ does
            p += 1
        tl.store(ptr + offs, w.to(DTYPE), mask=mask)  # exact: w already holds bf16 values if ROUND

    _TL_DTYPES = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16}


def supports(tensors: Sequence[torch.Tensor]) -> bool:
    """fp32 and bf16 weights, contiguous (others take rng.py's torch path)."""
    return all(t.dtype in (torch.float32, torch.bfloat16) and t.is_contiguous() for t in tensors)


@lru_cache(maxsize=16)  # bounded: a client's promoted blocks get new addresses every round
def _layout(
    tensors: tuple[tuple[int, int, int], ...], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-tensor table and per-program (tensor, first word) maps for (ptr, numel, word offset) triples.

    Cached on pointers and sizes: a step's passes and a replica's replays reuse the same tensors.
    """
    table = np.array(tensors, dtype=np.int64).reshape(-1)
    progs = [(i, w) for i, (_, n, _) in enumerate(tensors) for w in range(0, (n + 31) // 32, _WORDS)]
    prog = np.array(progs, dtype=np.int64).reshape(-1, 2)
    as_device = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
    # 8 bytes per program of 2048 elements (words within a tensor fit int32 below 2^36 elements)
    return as_device(table), as_device(prog[:, 0].astype(np.int32)), as_device(prog[:, 1].astype(np.int32))


def _params(keys: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """(k0, k1, float32 scale bits) per tensor and pair as int32, from (T, P) uint64 keys and scales."""
    out = np.empty(keys.shape + (3,), dtype=np.uint32)
    out[..., 0] = keys & 0xFFFFFFFF
    out[..., 1] = keys >> 32
    out[..., 2] = scales.astype(np.float32).view(np.uint32)
    return out.view(np.int32).reshape(-1)


def _ragged(rows: Sequence[Sequence], n_pairs: int, dtype) -> np.ndarray:
    out = np.zeros((len(rows), n_pairs), dtype=dtype)  # padding: scale 0, which the kernel skips
    for t, row in enumerate(rows):
        out[t, : len(row)] = row
    return out


@torch.no_grad()
def add_rademacher_(tensors: Sequence[torch.Tensor], keys: Sequence[int], scales: Sequence[float]) -> None:
    """tensors[t] += scales[t] * z(keys[t]) for every t: one pass of a ZO step, one launch per dtype."""
    FusedPass(tensors).apply(np.array(keys, dtype=np.uint64)[:, None], np.array(scales, dtype=np.float64)[:, None])


@torch.no_grad()
def add_rademacher_sequences_(
    tensors: Sequence[torch.Tensor],
    keys: Sequence[Sequence[int]],
    scales: Sequence[Sequence[float]],
    word_offsets: Sequence[int] | None = None,
) -> None:
    """For each tensor t, in order: t += scales[t][p] * z(keys[t][p])[32 * word_offsets[t]:] for every p."""
    if any(len(k) != len(s) for k, s in zip(keys, scales, strict=True)):
        raise ValueError("each tensor needs as many scales as keys")
    n_pairs = max((len(k) for k in keys), default=0)
    if n_pairs:
        FusedPass(tensors, word_offsets).apply(_ragged(keys, n_pairs, np.uint64), _ragged(scales, n_pairs, np.float64))


class FusedPass:
    """Tensors laid out for the kernel once (grouped by dtype, device tables built or fetched from the
    cache): each `apply` is then one small upload of (key, scale) pairs and one launch per dtype. A
    ZO step keeps one per perturbation for its three passes, so the host work per pass stays small.

    Tensors must be contiguous float32/bfloat16 on one device. bf16 tensors round like torch's CUDA
    add_ (alpha kept in fp32; torch's CPU kernel rounds alpha to bf16 first, so bf16 perturbations are
    not bit-exact across device kinds; zorba only perturbs fp32 weights)."""

    def __init__(self, tensors: Sequence[torch.Tensor], word_offsets: Sequence[int] | None = None) -> None:
        offsets = [0] * len(tensors) if word_offsets is None else list(word_offsets)
        by_dtype: dict[torch.dtype, list[int]] = {}
        for i, t in enumerate(tensors):
            if not supports([t]):
                raise ValueError(f"fused perturbation needs contiguous fp32/bf16 tensors, got {t.dtype}")
            if t.numel():
                by_dtype.setdefault(t.dtype, []).append(i)
        self.groups = []
        for dtype, idx in by_dtype.items():
            device = tensors[idx[0]].device
            layout = _layout(tuple((tensors[i].data_ptr(), tensors[i].numel(), offsets[i]) for i in idx), device)
            self.groups.append((dtype, np.array(idx), device, layout))

    @torch.no_grad()
    def apply(self, keys: np.ndarray, scales: np.ndarray) -> None:
        """keys (T, P) uint64 and scales (T, P), one row per tensor given at construction."""
        global launches
        for dtype, idx, device, (table, prog_tensor, prog_word) in self.groups:
            params = torch.from_numpy(_params(keys[idx], scales[idx])).to(device)
            _rademacher_kernel[(prog_tensor.numel(),)](
                table, prog_tensor, prog_word, params, keys.shape[1],
                DTYPE=_TL_DTYPES[dtype], ROUND=dtype != torch.float32, WORDS=_WORDS,
            )
            launches += 1
