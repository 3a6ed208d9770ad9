"""Counter-based perturbation generator: z is a pure function of (key, element index).

torch's own generators give different streams on CPU and CUDA, so a client on a GPU and a server on a
CPU would disagree on z and replay would not be bit-exact. Here every z element is computed from
integer hashing of its index, which is exact on any device, so the same key gives bit-identical z
everywhere.

Default distribution: Rademacher (z = +-1). Its values are exact in every dtype, it needs one 32-bit
hash per 32 elements (cheap: perturbation cost dominates a ZO step on CPU), and its fourth moment is
1 instead of 3, which lowers the SPSA estimator's variance (docs/theory.md). Gaussian z is offered
for comparison with MeZO; it uses log/cos, whose last bit may differ between devices, so bit-exact
replay across device kinds is only promised for Rademacher.

Speed (docs/performance.md): element i of a stream is bit (i mod 32) of word hash(i // 32). Words are
hashed chunk by chunk into reused buffers (no allocation, no page faults per call), each word is
expanded to 32 float32 +-1 by shifting its bits into the sign position of 1.0f, and the chunk is small
enough to stay in cache while it is added to the weights. Small tensors (biases, norms) are hashed
together in one packed call so that a block costs a few dozen torch calls, not a few per tensor. On
the CPU the hash runs in numpy uint32 (about 0.6 us a call against torch's 2) on views of the same
buffers, and the streams of one `add_noise_many_` call are hashed end to end in chunk-sized runs, so a
layer of mid-sized tensors pays a few calls per chunk, not a dozen per tensor.

Where the C extension was built (rng_native.py), float32 CPU tensors skip all of that: one compiled
loop per pass hashes and adds without writing z anywhere, at twice the speed and without the cold
cost that a pass following a forward pays in the library calls above. This file's torch path stays
the reference (and the path for other dtypes, Gaussian z, and installs without a C compiler).
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np
import torch

from zorba.core import rng_native
from zorba.wire.keys import DISTRIBUTIONS

_CHUNK = 1 << 20  # elements per generation call on CPU: the z chunk (4 MiB) stays in cache
_CUDA_CHUNK = 1 << 22  # larger on GPUs, where each call's launch overhead dominates small chunks
PACK_LIMIT = 1 << 16  # tensors below this many elements are hashed together in one call (and, in a
# ZO step off the GPU, keep their z across the three passes: at most 256 KiB each)
_MASK16 = 0xFFFF
_MASK17 = 0x1FFFF


def _i32(c: int) -> int:
    """An unsigned 32-bit constant (taken mod 2^32) as the signed int32 with the same bits."""
    c &= 0xFFFFFFFF
    return c - (1 << 32) if c >= 1 << 31 else c


_GOLDEN = _i32(0x9E3779B9)
_M1 = _i32(0x7FEB352D)
_M2 = _i32(0x846CA68B)
_SIGN = _i32(0x80000000)
_ONE = 0x3F800000  # bits of 1.0f


def _key_halves(key: int) -> tuple[int, int]:
    return _i32(key & 0xFFFFFFFF), _i32(key >> 32)


def _lowbias32(x: torch.Tensor, tmp: torch.Tensor | None = None) -> torch.Tensor:
    """Wellons' lowbias32 mixer on int32 tensors, in place (tmp: optional scratch of x's shape).

    Shifts are masked because int32 right shift is arithmetic; multiplication wraps modulo 2^32 on
    every torch backend, so the low 32 bits (all we keep) are exact.
    """
    tmp = torch.empty_like(x) if tmp is None else tmp
    for shift, mask, mult in ((16, _MASK16, _M1), (15, _MASK17, _M2), (16, _MASK16, None)):
        torch.bitwise_right_shift(x, shift, out=tmp)
        tmp &= mask
        x ^= tmp
        if mult is not None:
            x *= mult
    return x


def _hash_counters(start: int, count: int, key: int, device: torch.device) -> torch.Tensor:
    """hash(start .. start + count - 1) as a fresh int32 tensor (Gaussian path and tests)."""
    return _hash_words(torch.arange(start, start + count, dtype=torch.int64, device=device), [key])[0]


class _Workspace:
    """Reused buffers for one device and thread: word hashes and the +-1 expansion of one chunk."""

    def __init__(self, device: torch.device) -> None:
        self.chunk = _CUDA_CHUNK if device.type == "cuda" else _CHUNK
        words = self.chunk // 32
        self.golden = torch.arange(words, dtype=torch.int32, device=device) * _GOLDEN
        self.x = torch.empty(words, dtype=torch.int32, device=device)
        self.tmp = torch.empty(words, dtype=torch.int32, device=device)
        self.bits = torch.empty(words, 32, dtype=torch.int32, device=device)
        self.shifts = 31 - torch.arange(32, dtype=torch.int32, device=device)
        self.sign, self.one = _SIGN, _ONE
        self.on_cpu = device.type == "cpu"
        if self.on_cpu:  # numpy views of the same buffers: the hash in numpy, a fifth of torch's per-call cost
            self.golden_np, self.x_np, self.tmp_np = (b.numpy().view(np.uint32) for b in (self.golden, self.x, self.tmp))
            # 0-dim tensors: an in-place op with a Python int wraps it in a new tensor each call (2 -> 1 us)
            self.sign, self.one = torch.tensor(_SIGN, dtype=torch.int32), torch.tensor(_ONE, dtype=torch.int32)

    def expand(self, x: torch.Tensor) -> torch.Tensor:
        """32 float32 +-1 per word: bit j of the word goes to the sign bit of 1.0f (element j)."""
        bits = self.bits[: x.numel()]
        torch.bitwise_left_shift(x.unsqueeze(1), self.shifts, out=bits)
        bits &= self.sign
        bits |= self.one
        return bits.view(torch.float32).view(-1)

    def words(self, word_start: int, n_words: int, key: int) -> torch.Tensor:
        """hash(word_start + i) for i < n_words, in the reused buffer (n_words <= chunk / 32)."""
        if self.on_cpu:
            return self.runs_of_words([(word_start, n_words, key)])
        k0, k1 = _key_halves(key)
        x, tmp = self.x[:n_words], self.tmp[:n_words]
        torch.add(self.golden[:n_words], _i32(word_start * 0x9E3779B9 + k0), out=x)
        _lowbias32(x, tmp)
        x ^= k1
        return _lowbias32(x, tmp)

    def runs_of_words(self, runs: Sequence[tuple[int, int, int]], lead: _Lead | None = None) -> torch.Tensor:
        """CPU: the words of several streams end to end in the reused buffer, each run (word_start,
        n_words, key) as `words` gives it, hashed by one set of numpy calls (total <= chunk / 32): a
        mid-sized tensor then costs two numpy calls of the hash, not a dozen. `lead`: small streams
        in front of the runs, laid out as packed_noise lays them out, with one call for all of them
        where a run costs two (~2 us each)."""
        x, pos = self.x_np, 0
        if lead is not None:
            pos = len(lead.counters)
            np.add(lead.counters, lead.halves[:, 0], out=x[:pos])
        for start, n, key in runs:  # word * G + k0, wrapping: the counter's low 32 bits
            np.add(self.golden_np[:n], np.uint32((start * 0x9E3779B9 + key) & 0xFFFFFFFF), out=x[pos : pos + n])
            pos += n
        x, tmp = x[:pos], self.tmp_np[:pos]
        _lowbias32_numpy(x, tmp)
        pos = 0
        if lead is not None:
            pos = len(lead.counters)
            np.bitwise_xor(x[:pos], lead.halves[:, 1], out=x[:pos])
        for _, n, key in runs:
            np.bitwise_xor(x[pos : pos + n], np.uint32((key >> 32) & 0xFFFFFFFF), out=x[pos : pos + n])
            pos += n
        _lowbias32_numpy(x, tmp)
        return self.x[:pos]


_LOCAL = threading.local()


_CPU = torch.device("cpu")


def _workspace(device: torch.device) -> _Workspace:
    spaces = _LOCAL.__dict__.setdefault("spaces", {})
    key = (device, _CHUNK, _CUDA_CHUNK)  # chunk sizes in the key: tests monkeypatch them
    if key not in spaces:
        spaces[key] = _Workspace(device)
    return spaces[key]


def _cpu_workspace() -> _Workspace:
    """_workspace(cpu) without hashing a device per call (every CPU pass asks for it)."""
    ws = getattr(_LOCAL, "cpu", None)
    if ws is None or ws.chunk != _CHUNK:
        ws = _LOCAL.cpu = _workspace(_CPU)
    return ws


def reserve_workspace(device: str | torch.device = "cpu") -> bool:
    """Allocate the generator's scratch buffers now (a client counts them in its fixed memory), except
    on a GPU the fused kernel serves or a CPU the compiled loop serves: their Rademacher passes and
    replays never touch them (4.4 MiB on a CPU; on CUDA ~17.5 MiB, a 2^22-element expansion, 13% of
    MiniLM's inference peak on an H200, docs/performance.md). Gaussian z, other dtypes, or a kernel
    that fails to build later allocate them at their first call. Returns whether it allocated."""
    device = torch.device(device)
    if device.type == "cuda" and _rng_triton().usable(device):
        return False
    if device.type == "cpu" and rng_native.usable():
        return False
    _workspace(device)
    return True


def _rademacher_chunk(start: int, n: int, key: int, device: torch.device) -> torch.Tensor:
    """+-1.0 float32 for elements [start, start + n) as a view of the workspace (copy to keep it)."""
    ws = _workspace(device)
    return ws.expand(ws.words(start // 32, (n + 31) // 32, key))[:n]


def _gaussian_chunk(start: int, n: int, key: int, device: torch.device) -> torch.Tensor:
    """Box-Muller from two independent 24-bit uniforms per element."""
    a = _hash_counters(2 * start, 2 * n, key, device).view(n, 2)
    u = (((a >> 8) & 0xFFFFFF).to(torch.float32) + 0.5) * (1.0 / (1 << 24))
    radius = torch.sqrt(-2.0 * torch.log(u[:, 0]))
    return radius * torch.cos((2.0 * torch.pi) * u[:, 1])


def _chunk_size(device: torch.device) -> int:
    return _CUDA_CHUNK if device.type == "cuda" else _CHUNK


def _chunks(numel: int, chunk: int = 0) -> Iterable[tuple[int, int]]:
    chunk = chunk or _CHUNK
    for start in range(0, numel, chunk):
        yield start, min(chunk, numel - start)


def noise(numel: int, key: int, dist: str = "rademacher", device: str | torch.device = "cpu") -> torch.Tensor:
    """The whole z vector for one stream (tests and small tensors; add_noise_ avoids materialising it)."""
    device = torch.device(device)
    make = _rademacher_chunk if dist == "rademacher" else _gaussian_chunk
    parts = [make(s, n, key, device).clone() for s, n in _chunks(numel, _chunk_size(device))]
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.float32, device=device)


def _check_dist(dist: str) -> None:
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"unknown perturbation distribution {dist!r}; choose one of {DISTRIBUTIONS}")


def _add_(dst: torch.Tensor, z: torch.Tensor, scale: float) -> None:
    # One rounding per element: dst + float(scale) * z with z = +-1 is exact before the add.
    dst.add_(z if z.dtype == dst.dtype else z.to(dst.dtype), alpha=scale)


@torch.no_grad()
def add_noise_(tensor: torch.Tensor, key: int, scale: float, dist: str = "rademacher", offset: int = 0) -> None:
    """tensor += scale * z(key)[offset : offset + numel], in place, chunk by chunk; the tensor must be
    contiguous. `offset` (a multiple of 32) lets a caller stream a large tensor through a small buffer."""
    _check_dist(dist)
    if offset % 32:
        raise ValueError(f"offset {offset} is not a multiple of 32")
    flat = tensor.view(-1)
    if dist == "rademacher" and rng_native.serves([flat]):
        rng_native.add_([flat], [key], [scale], [offset // 32])
        return
    make = _rademacher_chunk if dist == "rademacher" else _gaussian_chunk
    for start, n in _chunks(flat.numel(), _chunk_size(flat.device)):
        _add_(flat[start : start + n], make(offset + start, n, key, flat.device), scale)


@lru_cache(maxsize=256)
def _pack_layout(sizes: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """For tensors hashed together: word counter * G, the tensor of each word, each tensor's first word."""
    words = [(n + 31) // 32 for n in sizes]
    offsets = [0]
    for w in words[:-1]:
        offsets.append(offsets[-1] + w)
    counters = torch.cat([torch.arange(w, dtype=torch.int32) for w in words]) * _GOLDEN
    owner = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(words))
    return counters.to(device), owner.to(device), offsets


def _packed_z(sizes: tuple[int, ...], keys: Sequence[int], device: torch.device) -> tuple[torch.Tensor, list[int]]:
    """z of several small streams from one hash over all their words (per-word keys gathered) and one
    expansion: a view of the workspace, and each stream's first word in it."""
    counters, owner, offsets = _pack_layout(sizes, device)
    halves = torch.tensor([_key_halves(k) for k in keys], dtype=torch.int32).to(device)
    x = counters + halves[:, 0][owner]
    _lowbias32(x)
    x ^= halves[:, 1][owner]
    return _workspace(device).expand(_lowbias32(x)), offsets


def _add_packed_(tensors: Sequence[torch.Tensor], keys: Sequence[int], scales: Sequence[float]) -> None:
    """Small tensors: one packed generation (numpy on the CPU: a fifth of torch's per-call cost), one add each."""
    sizes, device = tuple(t.numel() for t in tensors), tensors[0].device
    z, offsets = _packed_z_numpy(sizes, keys) if device.type == "cpu" else _packed_z(sizes, keys, device)
    for t, off, scale in zip(tensors, offsets, scales, strict=True):
        _add_(t.view(-1), z[32 * off : 32 * off + t.numel()], scale)


def noise_small(sizes: Sequence[int], keys: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """z of several small streams (Rademacher), kept: views into one buffer filled by one packed
    generation (a ZO step reuses them for its three passes, zo.py)."""
    device = torch.device(device)
    if not fits_one_pack(sizes, device):
        return [noise(n, k, device=device) for n, k in zip(sizes, keys, strict=True)]
    z, offsets = packed_noise(sizes, keys, device)
    if device.type != "cpu":
        return [z[32 * off : 32 * off + n] for n, off in zip(sizes, offsets, strict=True)]
    return packed_views(z, sizes)


@lru_cache(maxsize=64)
def _split_layout(sizes: tuple[int, ...]) -> tuple[list[int], list[int] | None]:
    """Pieces of a packed buffer (each stream, then its padding to a whole word where there is some)
    and which pieces are the streams (None: all of them)."""
    pieces, keep = [], []
    for n in sizes:
        keep.append(len(pieces))
        pieces.append(n)
        if n % 32:
            pieces.append(32 - n % 32)
    return pieces, None if len(keep) == len(pieces) else keep


def packed_noise(sizes: Sequence[int], keys: Sequence[int], device: str | torch.device = "cpu") -> tuple[torch.Tensor, list[int]]:
    """z of several small streams (Rademacher) in one new buffer, stream i at elements 32 * offsets[i]
    onward, padded to whole words: the layout `pack_offsets` gives (packed.py lays weights out the same
    way, so one add moves them all). The streams must fit one workspace chunk."""
    device = torch.device(device)
    if device.type == "cpu":
        return _packed_z_numpy(tuple(sizes), keys)
    z, offsets = _packed_z(tuple(sizes), keys, device)
    return z.clone(), offsets


def fits_one_pack(sizes: Sequence[int], device: str | torch.device = "cpu") -> bool:
    """Whether streams of these sizes fit one packed generation (one workspace chunk) on `device`."""
    return sum((n + 31) // 32 for n in sizes) <= _chunk_size(torch.device(device)) // 32


def pack_offsets(sizes: Sequence[int]) -> tuple[list[int], int]:
    """Each stream's first word in a packed buffer, and the buffer's length in words."""
    offsets = _pack_layout(tuple(sizes), torch.device("cpu"))[2]
    return offsets, sum((n + 31) // 32 for n in sizes)


@lru_cache(maxsize=64)
def _pack_layout_numpy(sizes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    counters, owner, offsets = _pack_layout(sizes, torch.device("cpu"))
    return counters.numpy().view(np.uint32), owner.numpy(), offsets


class _LeadLayout(NamedTuple):
    """Small streams laid out as packed_noise lays them out, for hashing in front of a chunk."""

    sizes: tuple[int, ...]
    counters: np.ndarray  # counter * G of each word, stream after stream
    words: np.ndarray  # words of each stream
    offsets: list[int]  # first word of each stream
    total: int  # words in all


@lru_cache(maxsize=64)
def _lead_layout(sizes: tuple[int, ...]) -> _LeadLayout:
    counters, _, offsets = _pack_layout_numpy(sizes)
    words = [(n + 31) // 32 for n in sizes]
    return _LeadLayout(sizes, counters, np.array(words), offsets, sum(words))


class _Lead(NamedTuple):
    """The lead of one pass: each word's counter * G and its stream's key halves (low, high), and the
    adds to make from the lead's z."""

    counters: np.ndarray
    halves: np.ndarray
    adds: list[tuple[torch.Tensor, int, float]]  # (flat tensor, its first element in the z, scale)


def _lead(layout: _LeadLayout, tensors: Sequence[torch.Tensor], keys: Sequence[int], scales: Sequence[float]) -> _Lead:
    halves = np.array(keys, dtype=_U64).view(_U32).reshape(-1, 2)  # (low, high) of each key
    adds = [(t if t.dim() == 1 else t.view(-1), 32 * o, s)
            for t, o, s in zip(tensors, layout.offsets, scales, strict=True) if s != 0.0]
    return _Lead(layout.counters, np.repeat(halves, layout.words, axis=0), adds)


_U64, _U32 = np.dtype("<u8"), np.dtype("<u4")


def _lowbias32_numpy(x: np.ndarray, tmp: np.ndarray | None = None) -> None:
    """lowbias32 on uint32 in place (tmp: optional scratch of x's shape, else shifts allocate)."""
    for shift, mult in ((16, _M1_U32), (15, _M2_U32), (16, None)):
        x ^= x >> shift if tmp is None else np.right_shift(x, shift, out=tmp)
        if mult is not None:
            x *= mult


_M1_U32, _M2_U32 = np.uint32(0x7FEB352D), np.uint32(0x846CA68B)


def _finish_hash_numpy(x: np.ndarray, k1: np.ndarray) -> np.ndarray:
    """The hash after `word * G + k0`: lowbias32, xor the key's high half, lowbias32 (in place)."""
    tmp = np.empty_like(x)
    _lowbias32_numpy(x, tmp)
    x ^= k1
    _lowbias32_numpy(x, tmp)
    return x


def _rademacher_rows_numpy(keys: Sequence[int], rows: np.ndarray, width: int) -> torch.Tensor:
    """rademacher_rows on the CPU: numpy's per-call cost is a fraction of torch's, and a deferred
    embedding lookup hashes only a few hundred words per key (tiny BERT: 60 -> 12 us)."""
    per_row = width // 32
    words = (rows.reshape(-1, 1) * per_row + np.arange(per_row)).reshape(-1).astype(np.uint32)  # low 32 bits
    halves = _halves_numpy(keys)
    x = _finish_hash_numpy(words[None, :] * np.uint32(0x9E3779B9) + halves[:, :1], halves[:, 1:])
    return torch.from_numpy(_expand_numpy(x).reshape(len(keys), len(rows), width))


def _halves_numpy(keys: Sequence[int]) -> np.ndarray:
    """(low, high) 32-bit halves of each 64-bit key, uint32 (len(keys), 2)."""
    return np.array([(k & 0xFFFFFFFF, (k >> 32) & 0xFFFFFFFF) for k in keys], dtype=np.uint32)


def _expand_numpy(x: np.ndarray) -> np.ndarray:
    """Workspace.expand in numpy: 32 float32 +-1 per uint32 word, bit j to the sign of element j."""
    bits = x[..., None] << _SHIFTS_NUMPY
    bits &= np.uint32(0x80000000)
    bits |= np.uint32(_ONE)
    return bits.view(np.float32)


def _packed_z_numpy(sizes: tuple[int, ...], keys: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
    """_packed_z on the CPU in numpy uint32 (wrapping, logical shifts): the same bits with a fifth of
    the per-call overhead, which is what a step on a tiny model pays (~36 small tensors, 34k elements:
    115 -> 25 us, docs/performance.md)."""
    counters, owner, offsets = _pack_layout_numpy(sizes)
    halves = _halves_numpy(keys)
    x = _finish_hash_numpy(counters + halves[owner, 0], halves[owner, 1])
    return torch.from_numpy(_expand_numpy(x).reshape(-1)), offsets


_SHIFTS_NUMPY = (31 - np.arange(32, dtype=np.uint32)).astype(np.uint32)


@torch.no_grad()
def add_noise_many_(
    tensors: Sequence[torch.Tensor], keys: Sequence[int], scales: Sequence[float], dist: str = "rademacher"
) -> None:
    """tensors[i] += scales[i] * z(keys[i]) for all i; identical to add_noise_ one by one, faster.

    Tensors with a zero scale are skipped. float32 CPU tensors go through one call of the compiled
    loop (rng_native.py); elsewhere small tensors on the same device are packed into one call, and on
    a GPU all of them go through one fused kernel launch (rng_triton.py).
    """
    _check_dist(dist)
    if dist == "rademacher" and tensors and rng_native.serves(tensors):  # one compiled call for all
        rng_native.add_(tensors, keys, scales)
        return
    if dist == "rademacher" and tensors and _fused(tensors):
        live = [(t, k, s) for t, k, s in zip(tensors, keys, scales, strict=True) if s != 0.0]
        if not live or _run_fused(_rng_triton().add_rademacher_, *zip(*live, strict=True)):
            return
    small: dict[torch.device, list[tuple[torch.Tensor, int, float]]] = {}
    large_cpu: list[tuple[torch.Tensor, int, float]] = []
    for t, k, s in zip(tensors, keys, scales, strict=True):
        if s == 0.0 or t.numel() == 0:
            continue
        if dist == "rademacher" and t.numel() < PACK_LIMIT:
            small.setdefault(t.device, []).append((t, k, s))
        elif dist == "rademacher" and t.device.type == "cpu" and t.is_contiguous():
            large_cpu.append((t, k, s))
        else:
            add_noise_(t, k, s, dist)
    if large_cpu:
        _add_rademacher_cpu_(large_cpu)
    for group in small.values():
        total = sum((t.numel() + 31) // 32 for t, _, _ in group)
        if total > _chunk_size(group[0][0].device) // 32:  # cannot happen with default sizes; stay correct
            for t, k, s in group:
                add_noise_(t, k, s, dist)
            continue
        _add_packed_(*zip(*group, strict=True))


def _add_rademacher_cpu_(todo: Sequence[tuple[torch.Tensor, int, float]], lead: _Lead | None = None) -> torch.Tensor | None:
    """Rademacher adds on the CPU, the same bits as add_noise_ tensor by tensor: the words of all the
    streams, end to end, are cut into workspace-sized chunks (a tensor may span two), and each chunk
    is one numpy hash, one expansion and one add per piece. Every call costs 1-2 us whatever its size,
    and a layer of mid-sized tensors paid a dozen per tensor (docs/performance.md, A2). `lead`: small
    streams hashed in front of the first chunk by the same calls; their packed z is returned (a new
    tensor in packed_noise's layout)."""
    if rng_native.serves([t for t, _, _ in todo]):
        return _add_rademacher_native_(todo, lead)
    ws = _cpu_workspace()
    limit = ws.chunk // 32
    pieces: list[tuple[torch.Tensor, int, float, int, int]] = []  # (flat tensor, key, scale, first word, words)
    used = 0 if lead is None else len(lead.counters)
    kept = None
    for t, k, s in todo:
        flat, words, w = (t if t.dim() == 1 else t.view(-1)), (t.numel() + 31) // 32, 0
        while w < words:
            if used == limit:
                z = _add_pieces_(ws, pieces, lead)
                kept, lead, pieces, used = (kept if lead is None else z), None, [], 0
            n = min(words - w, limit - used)
            pieces.append((flat, k, s, w, n))
            used, w = used + n, w + n
    if used:
        z = _add_pieces_(ws, pieces, lead)
        kept = kept if lead is None else z
    return kept


def _add_rademacher_native_(todo: Sequence[tuple[torch.Tensor, int, float]], lead: _Lead | None) -> torch.Tensor | None:
    """_add_rademacher_cpu_ through the compiled loop (rng_native.py): z is never materialised, so a
    pass that follows a forward pays no cold buffers or library code (docs/performance.md).
    The lead's z is made in numpy, as packed_noise makes it, for the other passes to reuse."""
    kept = None
    if lead is not None:
        x = _finish_hash_numpy(lead.counters + lead.halves[:, 0], lead.halves[:, 1])
        kept = torch.from_numpy(_expand_numpy(x).reshape(-1))
        for flat, first, s in lead.adds:
            _add_(flat, kept[first : first + flat.numel()], s)
    if todo:
        rng_native.add_(*zip(*todo, strict=True))
    return kept


def _add_pieces_(
    ws: _Workspace, pieces: Sequence[tuple[torch.Tensor, int, float, int, int]], lead: _Lead | None = None
) -> torch.Tensor | None:
    """One chunk: hash, expand, add each piece; with `lead`, a copy of the lead streams' z."""
    z = ws.expand(ws.runs_of_words([(w, n, k) for _, k, _, w, n in pieces], lead))
    at = 0
    if lead is not None:
        for flat, first, s in lead.adds:
            _add_(flat, z[first : first + flat.numel()], s)
        at = 32 * len(lead.counters)
    for flat, _, s, w, n in pieces:
        size = flat.numel()
        if w == 0 and 32 * n >= size:  # the whole stream (most are): no slice of the tensor
            _add_(flat, z[at : at + size], s)
        else:
            stop = min(size, 32 * (w + n))  # only a stream's last word is partial
            _add_(flat[32 * w : stop], z[at : at + stop - 32 * w], s)
        at += 32 * n
    return None if lead is None else z[: 32 * len(lead.counters)].clone()


def add_noise_many_keeping_(
    tensors: Sequence[torch.Tensor], keys: Sequence[int], scales: Sequence[float], keep: int
) -> torch.Tensor:
    """add_noise_many_(tensors, keys, scales) (Rademacher), returning the z of the first `keep` streams
    as packed_noise lays it out (the same bits; a zero scale among them adds nothing, its z is still
    made). On the CPU those streams are hashed in front of the first chunk by the same calls as the
    others: a ZO step's first pass then pays no separate generation for its small tensors, whose every
    call is slow from the caches the pass before evicted (docs/performance.md)."""
    grad = torch.is_grad_enabled()
    torch._C._set_grad_enabled(False)  # torch.no_grad() without its Python layers: ~10 us from cold caches
    try:
        layout = _lead_layout(tuple([t.numel() for t in tensors[:keep]]))
        if not (0 < layout.total <= _CHUNK // 32 and _cpu_contiguous(tensors)):  # not one chunk's lead
            add_noise_many_(tensors, keys, scales)
            return packed_noise(layout.sizes, keys[:keep])[0]
        todo = [(t, k, s) for t, k, s in zip(tensors[keep:], keys[keep:], scales[keep:], strict=True) if s != 0.0]
        return _add_rademacher_cpu_(todo, _lead(layout, tensors[:keep], keys[:keep], scales[:keep]))
    finally:
        torch._C._set_grad_enabled(grad)


def _cpu_contiguous(tensors: Sequence[torch.Tensor]) -> bool:
    return all(t.is_cpu and t.is_contiguous() for t in tensors)


def packed_views(z: torch.Tensor, sizes: Sequence[int]) -> list[torch.Tensor]:
    """Each stream's z in a packed buffer laid out as `packed_noise` gives it (views, no copy)."""
    pieces, keep = _split_layout(tuple(sizes))
    views = z.split_with_sizes(pieces)  # one call for all the views (a slice each: ~1 us apiece)
    return list(views) if keep is None else [views[i] for i in keep]


def _hash_words(words: torch.Tensor, keys: Sequence[int]) -> torch.Tensor:
    """hash(w) under each key for int64 word indices: int32 (len(keys), len(words)), the same words
    rng streams use; one set of torch ops for all keys (int64 products wrap, the low 32 bits stay exact)."""
    halves = torch.tensor([_key_halves(k) for k in keys], dtype=torch.int64, device=words.device)
    k0, k1 = halves[:, :1] & 0xFFFFFFFF, halves[:, 1:].to(torch.int32)
    x = ((words[None, :] * 0x9E3779B9 + k0) & 0xFFFFFFFF).to(torch.int32)  # keeps the low 32 bits
    _lowbias32(x)
    x ^= k1
    return _lowbias32(x)


def rademacher_rows(keys: Sequence[int], rows: torch.Tensor, width: int) -> torch.Tensor:
    """Rows `rows` of each z(key) viewed as a (n x width) table, float32 (len(keys), len(rows), width):
    the perturbations of just the embedding rows a batch looks up (deferred.py)."""
    if rows.device.type == "cpu" and width % 32 == 0:
        return _rademacher_rows_numpy(keys, rows.numpy().astype(np.int64), width)
    rows = rows.to(torch.int64).view(-1, 1)
    if width % 32 == 0:  # whole words per row: hash each word once and expand its 32 bits
        per_row = width // 32
        x = _hash_words((rows * per_row + torch.arange(per_row, device=rows.device)).view(-1), keys)
        shifts = 31 - torch.arange(32, dtype=torch.int32, device=rows.device)
        bits = ((x[..., None] << shifts) & _SIGN) | _ONE
        return bits.view(torch.float32).view(len(keys), len(rows), width)
    elements = (rows * width + torch.arange(width, device=rows.device)).view(-1)
    x = _hash_words(elements >> 5, keys)
    bit = ((x >> (elements & 31).to(torch.int32)) & 1).to(torch.float32)  # bit j of the word, j < 32
    return (1.0 - 2.0 * bit).view(len(keys), len(rows), width)


@torch.no_grad()
def add_noise_sequences_(
    tensors: Sequence[torch.Tensor],
    keys: Sequence[Sequence[int]],
    scales: Sequence[Sequence[float]],
    dist: str = "rademacher",
    word_offsets: Sequence[int] | None = None,
) -> None:
    """For each tensor t, in order: t += scales[t][p] * z(keys[t][p]), starting at element
    32 * word_offsets[t] of each stream. Replay of a round: on a GPU one fused launch, and on a CPU
    the compiled loop (rng_native.py), apply every pair while reading the weights once; elsewhere the
    adds run pair by pair (same bits)."""
    _check_dist(dist)
    if dist == "rademacher" and tensors and rng_native.serves(tensors):
        rng_native.add_sequences_(tensors, keys, scales, word_offsets)
        return
    if dist == "rademacher" and tensors and _fused(tensors):
        if _run_fused(_rng_triton().add_rademacher_sequences_, tensors, keys, scales, word_offsets):
            return
    for p in range(max((len(k) for k in keys), default=0)):
        todo = [t for t in range(len(tensors)) if p < len(keys[t])]
        if word_offsets is None:
            add_noise_many_([tensors[t] for t in todo], [keys[t][p] for t in todo], [scales[t][p] for t in todo], dist)
            continue
        for t in todo:
            if scales[t][p] != 0.0:
                add_noise_(tensors[t], keys[t][p], scales[t][p], dist, offset=32 * word_offsets[t])


# Read once (an environment lookup is ~10 us from cold caches, paid by every pass on the CPU): Triton
# itself decides at a kernel's definition, i.e. at rng_triton's import, whether it runs interpreted.
_CPU_INTERPRETER = os.environ.get("TRITON_INTERPRET") == "1"


def _fused(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the fused Triton path serves these tensors (imported only when a GPU tensor shows up)."""
    if tensors[0].is_cpu and not _CPU_INTERPRETER:
        return False
    device = tensors[0].device
    fused = _rng_triton()
    return fused.usable(device) and fused.supports(tensors)


def fused_pass(tensors: Sequence[torch.Tensor], keys: Sequence[int]):
    """For repeated passes over the same tensors and keys (a ZO step): a callable `add_(scales)` that
    runs the fused kernel, or None where the fused path does not serve these tensors. If the kernel
    cannot be built, `add_` returns False having changed nothing (the caller takes the torch path)."""
    if not tensors or not _fused(tensors):
        return None
    layout = _rng_triton().FusedPass(tensors)
    key_column = np.array(keys, dtype=np.uint64)[:, None]

    def add_(scales: Sequence[float]) -> bool:
        return _run_fused(layout.apply, key_column, np.array(scales, dtype=np.float64)[:, None])

    return add_


def _run_fused(fn, *args) -> bool:
    """Run the fused path; if its kernel cannot be built here (it fails before touching any weight),
    warn once, turn the fused path off and let the caller take the torch path, which gives the
    same bits. A failure after a launch is re-raised: the weights may be half-updated."""
    fused = _rng_triton()
    before = fused.launches
    try:
        fn(*args)
        return True
    except Exception as exc:
        if fused.launches != before:
            raise
        fused.disable(f"{type(exc).__name__}: {exc}")
        return False


def _rng_triton():
    from zorba.core import rng_triton

    return rng_triton


def golden_digest(key: int = 20260427, numel: int = 1000, dist: str = "rademacher", device: str = "cpu") -> str:
    """sha256 of z's float32 bytes: the cross-device bit-equality check (tests and GPU script)."""
    z = noise(numel, key, dist, device).cpu().contiguous()
    return hashlib.sha256(z.numpy().tobytes()).hexdigest()
