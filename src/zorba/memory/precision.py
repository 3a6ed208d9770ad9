"""Client-side precision: frozen blocks in bf16 (or int8), active blocks in fp32, exact fp32 state offloaded.

A client's memory then depends on which blocks it trains (docs/memory.md). Three pieces:

- `MasterStore`: the exact fp32 global weights, off the accelerator and off the process heap: pinned
  host memory when the model is on a GPU, an unlinked temporary file on a CPU-only client (read and
  written with pread/pwrite, so it lives in the page cache, not in the process's resident set).
  Replay is applied here, in chunks, so it stays bit-exact and needs only a chunk of scratch memory.
- `TieredReplica`: a Replica whose working copy on the device holds each inactive block in the frozen
  dtype and each active block in fp32; `snapshot(blocks)` promotes the round's blocks from the store,
  `restore` demotes them again (the store *is* the round-start snapshot, so none is kept in memory).
- `attach_upcast_hooks`: frozen weights are only *stored* in low precision; each module upcasts its own
  frozen weights to fp32 just for its forward (one module's weights at a time; int8 ones dequantised
  with their per-row scales, quant.py), and embeddings cast their looked-up rows. Activations
  therefore stay fp32 everywhere: the tiny difference between the +mu and -mu forwards survives the
  frozen layers downstream of an active block, which bf16 activations would round away.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import tempfile
import types
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from zorba.core.models import LoadedModel
from zorba.core.replica import Op, Replica, block_keys, replay_ops
from zorba.core.rng import add_noise_sequences_, reserve_workspace
from zorba.errors import UserError
from zorba.memory.quant import SCALE_ATTR, dequantize_rows, fp32_rows, int8_eligible, quantize_rows
from zorba.wire.protocol import LogEntry

# int8: weight-only, per-row scales (quant.py) for the Linear and Embedding weights; the rest of a frozen
# block (norms, biases, other modules' weights) is then kept in bf16.
PRECISIONS = {"int8": torch.int8, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_CHUNK = 1 << 20  # elements streamed between the store and the device at a time
_SMALL = 1 << 14  # tensors below this size are replayed together (one packed noise call per step)
_IO_LIMIT = 1 << 30  # bytes per pread/pwrite call (Linux caps one call at ~2 GiB)


def frozen_bytes(precision: str) -> float:
    """Bytes per frozen parameter for the first-principles memory model: the dtype's size (int8: its
    scales and the bf16 rest are under 1% of a transformer block)."""
    return float(frozen_dtype(precision).itemsize)


def frozen_dtype(precision: str) -> torch.dtype:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}")
    return PRECISIONS[precision]


def working_dtype(dtype: torch.dtype, int8_eligible: bool) -> torch.dtype:
    """A tensor's working dtype in a block held in `dtype`: int8 only where eligible (quant.py), bf16
    for the rest of an int8 block."""
    if dtype == torch.int8:
        return torch.int8 if int8_eligible else torch.bfloat16
    return dtype


class MasterStore:
    """Exact fp32 copies of all block tensors, in a temp file (CPU) or pinned host memory (GPU)."""

    def __init__(self, shapes: Sequence[Sequence[tuple[int, ...]]], device: torch.device, kind: str = "auto") -> None:
        """Room for tensors of these shapes (per block); their values are written with `write`."""
        self.kind = ("pinned" if device.type == "cuda" else "file") if kind == "auto" else kind
        if self.kind not in ("file", "pinned", "memory"):
            raise ValueError(f"unknown store kind {kind!r}")
        self.shapes = [[tuple(s) for s in block] for block in shapes]
        self.device = device
        if self.kind == "file":
            self._file = tempfile.TemporaryFile(dir=os.environ.get("ZORBA_OFFLOAD_DIR"), prefix="zorba-master-")
            self._fd = self._file.fileno()
            self._offsets, end = {}, 0
            for b, block in enumerate(self.shapes):
                for i, _ in enumerate(block):
                    self._offsets[(b, i)] = end
                    end += 4 * self.numel(b, i)
        else:
            pin = self.kind == "pinned" and torch.cuda.is_available()
            self._host = [[torch.empty(s, dtype=torch.float32, pin_memory=pin) for s in block] for block in self.shapes]

    @classmethod
    def of(cls, tensors: Sequence[Sequence[torch.Tensor]], kind: str = "auto") -> MasterStore:
        """A store holding fp32 copies of these tensors (per block), on their device's kind of store."""
        store = cls([[t.shape for t in block] for block in tensors], tensors[0][0].device, kind)
        for b, block in enumerate(tensors):
            for i, t in enumerate(block):
                flat = t.detach().reshape(-1)
                for start in range(0, flat.numel(), _CHUNK):
                    store.write(b, i, start, flat[start : start + _CHUNK].float())
        return store

    def numel(self, b: int, i: int) -> int:
        return int(np.prod(self.shapes[b][i], dtype=np.int64))

    def read(self, b: int, i: int, start: int, n: int, out: torch.Tensor | None = None) -> torch.Tensor:
        """Elements [start, start + n) of tensor (b, i) as fp32 on the model's device (into `out`)."""
        if self.kind == "file":
            host = out if out is not None and out.device.type == "cpu" else torch.empty(n, dtype=torch.float32)
            _pread_all(self._fd, host.numpy().view(np.uint8), self._offsets[(b, i)] + 4 * start)
        else:
            host = self._host[b][i].view(-1)[start : start + n]
        if out is None:
            return host.to(self.device, copy=True)
        if out.data_ptr() != host.data_ptr():
            out.copy_(host, non_blocking=False)
        return out

    def write(self, b: int, i: int, start: int, src: torch.Tensor) -> None:
        if self.kind == "file":
            arr = src.detach().to("cpu", torch.float32).contiguous().numpy().view(np.uint8)
            _pwrite_all(self._fd, arr, self._offsets[(b, i)] + 4 * start)
        else:
            self._host[b][i].view(-1)[start : start + src.numel()].copy_(src)

    def chunks(self, b: int, i: int) -> Iterator[tuple[int, int]]:
        n = self.numel(b, i)
        for start in range(0, n, _CHUNK):
            yield start, min(_CHUNK, n - start)

    def nbytes(self) -> int:
        return sum(4 * self.numel(b, i) for b, block in enumerate(self.shapes) for i in range(len(block)))


def _pread_all(fd: int, buf: np.ndarray, offset: int) -> None:
    view, done = memoryview(buf), 0
    while done < len(view):
        got = os.preadv(fd, [view[done : done + _IO_LIMIT]], offset + done)
        if got <= 0:
            raise OSError(f"short read from the master-weights file at byte {offset + done}")
        done += got


def _pwrite_all(fd: int, buf: np.ndarray, offset: int) -> None:
    view, done = memoryview(buf), 0
    while done < len(view):
        done += os.pwrite(fd, view[done : done + _IO_LIMIT], offset + done)


def attach_upcast_hooks(model: nn.Module) -> list:
    """Let fp32 and low-precision weights mix in one forward with fp32 activations throughout.

    Every module that owns parameters upcasts its own low-precision ones for the duration of its
    forward (tied weights are upcast by each module that uses them); embeddings instead cast the rows
    they return, which is exact and avoids upcasting a whole vocabulary matrix, and nn.Linear upcasts
    its weight a block of rows at a time.
    """
    handles = []
    for module in model.modules():
        if not any(True for _ in module.parameters(recurse=False)):
            continue
        if isinstance(module, nn.Embedding):
            handles.append(module.register_forward_hook(_rows_to_fp32, with_kwargs=True))
        elif type(module) is nn.Linear:
            module.forward = types.MethodType(_mixed_linear, module)
            handles.append(_Restore(module))
        else:
            handles.append(module.register_forward_pre_hook(_upcast_weights))
            handles.append(module.register_forward_hook(_restore_weights))
    return handles


_LINEAR_ROWS = 4096  # output features upcast at a time by a frozen Linear (bounds the transient)


def _mixed_linear(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """nn.Linear.forward that upcasts a low-precision weight a few thousand rows at a time: a tied LM
    head (vocabulary x hidden) would otherwise need a whole fp32 copy of the embedding matrix."""
    w, b = self.weight, self.bias
    if w.dtype == torch.float32:
        return nn.functional.linear(x, w, b)
    if torch.is_grad_enabled() and x.requires_grad:  # backprop through a frozen block (FedAvg-LoRA)
        return _FrozenLinear.apply(x, w, b)
    if w.shape[0] <= _LINEAR_ROWS:  # one piece: no output buffer to copy into (an activation saved)
        return nn.functional.linear(x, fp32_rows(w), None if b is None else b.float())
    out = torch.empty(*x.shape[:-1], w.shape[0], dtype=torch.float32, device=x.device)
    for r in range(0, w.shape[0], _LINEAR_ROWS):
        rows = slice(r, r + _LINEAR_ROWS)
        bias = None if b is None else b[rows].float()
        out[..., rows] = nn.functional.linear(x, fp32_rows(w, rows), bias)
    return out


class _FrozenLinear(torch.autograd.Function):
    """x W^T + b for a frozen low-precision W, in fp32, with a gradient for x only. Backward upcasts W
    again rather than keeping the forward's fp32 copy alive until then: a first-order client that
    backpropagates through frozen blocks holds them in low precision, as a ZO client does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(w)
        return nn.functional.linear(x, fp32_rows(w), None if b is None else b.float())

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (w,) = ctx.saved_tensors
        return grad @ fp32_rows(w), None, None


class _Restore:
    """A handle that undoes the forward override (same `remove()` as hook handles)."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def remove(self) -> None:
        self.module.__dict__.pop("forward", None)


def _rows_to_fp32(module: nn.Module, args, kwargs, output):
    if not isinstance(output, torch.Tensor) or output.dtype == torch.float32:
        return output
    if output.dtype == torch.int8:  # int8 only on exact nn.Embedding (quant.int8_eligible): args are its ids
        ids = args[0] if args else kwargs["input"]
        return dequantize_rows(output, getattr(module.weight, SCALE_ATTR)[ids])
    return output.float() if output.is_floating_point() else output


def _upcast_weights(module: nn.Module, args) -> None:
    stash = []
    for p in module.parameters(recurse=False):
        if p.dtype != torch.float32:
            stash.append((p, p.data))
            p.data = p.data.float()
    module._zorba_stash = stash  # noqa: SLF001 - per-module scratch between the two hooks


def _restore_weights(module: nn.Module, args, output) -> None:
    for p, low in getattr(module, "_zorba_stash", ()):
        p.data = low
    module._zorba_stash = []


_MMAP_THRESHOLD = 1 << 20
_M_MMAP_THRESHOLD = -3  # mallopt parameter number (glibc malloc.h)


def return_freed_memory_promptly() -> None:
    """Fix glibc's mmap threshold at 1 MiB: allocations above it are mmapped and go back to the OS
    when freed. By default glibc raises the threshold after large frees (up to 32 MiB), so a round's
    activations then come from the heap, which keeps its pages: OPT-125m client peak 901 -> 860 MiB
    (docs/memory.md). No effect where glibc is absent."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
    except (OSError, AttributeError):
        pass


class TieredReplica(Replica):
    """A client's replica: exact fp32 state in a MasterStore, a mixed-precision working copy on the device."""

    def __init__(self, lm: LoadedModel, precision: str = "bf16", store: str = "auto",
                 master: MasterStore | None = None) -> None:
        """`master`: the exact fp32 weights when they are already in a store (streamload.py); the
        model's parameters then only need the right shapes and working dtypes, not their values."""
        # Before the working copies are allocated: made under glibc's raised threshold they would sit
        # in the heap, and promoting a block to fp32 would leave their pages resident (+26 MiB, OPT-125m).
        return_freed_memory_promptly()
        super().__init__(lm)
        self.precision = precision
        self.frozen = frozen_dtype(precision)
        self._int8 = int8_eligible(lm.model) if self.frozen == torch.int8 else set()
        self.store = master if master is not None else MasterStore.of(self.tensors, store)
        self.active: set[int] = set()
        self._names = {n: (b, i) for b, blk in enumerate(lm.blocks) for i, n in enumerate(blk.param_names)}
        self._hooks = attach_upcast_hooks(lm.model) if self.frozen != torch.float32 else []
        for b in range(self.num_blocks):
            self._set_working(b, self.frozen)
        reserve_workspace(self.store.device)

    def _set_working(self, b: int, dtype: torch.dtype) -> None:
        """Re-derive block b's working tensors in `dtype` from the store, chunk by chunk (int8: the
        eligible weights quantised, the block's other tensors in bf16)."""
        for i, p in enumerate(self.tensors[b]):
            want = working_dtype(dtype, id(p) in self._int8)
            if want == torch.int8:
                self._quantize_working(b, i, p)
            else:
                self._convert_working(b, i, p, want)

    def _convert_working(self, b: int, i: int, p: torch.Tensor, dtype: torch.dtype) -> None:
        same = p.dtype == dtype
        target = p.data if same else torch.empty(p.shape, dtype=dtype, device=p.device)
        flat = target.view(-1)
        for start, n in self.store.chunks(b, i):
            if dtype == torch.float32:
                self.store.read(b, i, start, n, out=flat[start : start + n])
            else:
                flat[start : start + n].copy_(self.store.read(b, i, start, n))
        if not same:
            p.data = target
            p.__dict__.pop(SCALE_ATTR, None)

    def _quantize_working(self, b: int, i: int, p: torch.Tensor) -> None:
        """Whole rows at a time (each row has one scale), about a store chunk of fp32 scratch."""
        rows, cols = p.shape
        q = torch.empty(p.shape, dtype=torch.int8, device=p.device)
        scale = torch.empty(rows, dtype=torch.float32, device=p.device)
        step = max(1, _CHUNK // cols)
        for r in range(0, rows, step):
            n = min(step, rows - r)
            q[r : r + n], scale[r : r + n] = quantize_rows(self.store.read(b, i, r * cols, n * cols).view(n, cols))
        p.data = q
        setattr(p, SCALE_ATTR, scale)

    def apply(self, entry: LogEntry) -> None:
        """Replay on the store (bit-exact fp32), then re-derive the working copy of each changed block."""
        changed = self._replay_on_store(entry)
        for b in changed:
            self._set_working(b, torch.float32 if b in self.active else self.frozen)
        self.cursor += 1

    def _replay_on_store(self, entry: LogEntry) -> list[int]:
        ops = replay_ops(entry)
        for b, block_ops in ops.items():
            self._replay_block(b, block_ops, entry.dist)
        return list(ops)

    def _replay_block(self, b: int, ops: list[Op], dist: str) -> None:
        sizes = [self.store.numel(b, i) for i in range(len(self.tensors[b]))]
        scales = [s for *_, s in ops]
        small = [i for i, n in enumerate(sizes) if n < _SMALL]
        if small:
            bufs = [self.store.read(b, i, 0, sizes[i]) for i in small]
            add_noise_sequences_(bufs, block_keys(b, small, ops), [scales] * len(small), dist)
            for i, buf in zip(small, bufs, strict=True):
                self.store.write(b, i, 0, buf)
        for i in (i for i, n in enumerate(sizes) if n >= _SMALL):
            keys = block_keys(b, [i], ops)
            for start, n in self.store.chunks(b, i):
                buf = self.store.read(b, i, start, n)
                add_noise_sequences_([buf], keys, [scales], dist, word_offsets=[start // 32])
                self.store.write(b, i, start, buf)

    def snapshot(self, blocks: Sequence[int]) -> tuple[int, ...]:
        """Promote the round's blocks to fp32 working copies; the store keeps their round-start values."""
        for b in sorted(blocks):
            self._set_working(b, torch.float32)
        self.active = set(blocks)
        return tuple(sorted(blocks))

    @torch.no_grad()
    def restore(self, snap: Iterable[int]) -> None:
        """Back to the global weights: re-derive the round's blocks from the store, in the frozen dtype."""
        for b in snap:
            self._set_working(b, self.frozen)
        self.active = set()

    def digest(self) -> str:
        """Same bytes as models.state_digest of an fp32 model holding the global weights."""
        h = hashlib.sha256()
        for name, _ in self.lm.model.named_parameters():
            b, i = self._names[name]
            h.update(name.encode())
            for start, n in self.store.chunks(b, i):
                h.update(self.store.read(b, i, start, n).cpu().numpy().tobytes())
        return h.hexdigest()

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        if self.store.kind == "file":
            with contextlib.suppress(OSError):
                self.store._file.close()  # noqa: SLF001


def make_client_replica(lm: LoadedModel, precision: str = "bf16", store: str = "auto") -> Replica:
    """The replica a client trains on: frozen blocks in `precision`, exact fp32 state offloaded."""
    return TieredReplica(lm, precision, store)
