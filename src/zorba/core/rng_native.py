"""The compiled CPU perturbation (_rng_native.c) behind rng.py: w += s * z in one loop per tensor.

rng.py's CPU path builds z from numpy and torch calls: hash a chunk of words into a buffer, expand it
into a 4 MiB float buffer, add that to the weights. A ZO step's second and third passes follow a
forward that streamed the whole model through the caches, and then each of those few dozen calls
runs cold (its library code, its buffers): about +0.4 ms a pass whatever its size, which is why
perturbing one MiniLM layer cost 1.45-1.54x its share of perturbing all of them (target A2). The C
loop touches only the weights, and runs the all-blocks pass at twice the speed as well
(docs/performance.md).

A pass of at least 2M elements is cut into word-aligned pieces run on torch's thread count (the
loop releases the GIL); smaller passes stay on the calling thread.

The extension is optional (setup.py): where it was not built (no C compiler at install) or
`ZORBA_CPU_KERNEL=torch` is set, rng.py keeps its torch path, which gives the same bits.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np
import torch

_VERSION = 3  # _rng_native.c's ZORBA_NATIVE_VERSION

try:
    from zorba.core import _rng_native
except ImportError:  # built at install when a C compiler is there; the torch path otherwise
    _rng_native = None


def _why_off() -> str | None:
    if os.environ.get("ZORBA_CPU_KERNEL", "native") == "torch":
        return "ZORBA_CPU_KERNEL=torch"
    if _rng_native is None:
        return "the C extension zorba.core._rng_native was not built (no C compiler at install?)"
    if getattr(_rng_native, "VERSION", 0) != _VERSION:  # an editable install's stale build
        return f"zorba.core._rng_native is version {getattr(_rng_native, 'VERSION', 0)}, not {_VERSION}: reinstall zorba"
    return None


_WHY_OFF = _why_off()
_state = {"off": _WHY_OFF}


def usable() -> bool:
    """Whether the compiled loop serves rng.py's CPU Rademacher adds."""
    return _state["off"] is None


def why_off() -> str | None:
    return _state["off"]


@contextmanager
def off() -> Iterator[None]:
    """rng.py's torch path for a while: tests and benchmarks compare the two paths in one process."""
    before = _state["off"]
    _state["off"] = "turned off by rng_native.off()"
    try:
        yield
    finally:
        _state["off"] = before


def serves(tensors: Sequence[torch.Tensor]) -> bool:
    """Whether the loop takes these tensors: contiguous float32 on the CPU (other dtypes round
    s * z to their own precision through the torch path)."""
    return usable() and all(t.dtype == torch.float32 and t.is_cpu and t.is_contiguous() for t in tensors)


def add_(tensors: Sequence[torch.Tensor], keys: Sequence[int], scales: Sequence[float],
         first_words: Sequence[int] | None = None) -> None:
    """tensors[i] += scales[i] * z(keys[i])[32 * first_words[i]:][:numel] in place; `serves` must hold."""
    Passes(tensors, keys, first_words).add_(scales)


class Passes:
    """Repeated passes over the same tensors and keys (a ZO step's three): addresses, sizes and keys
    are gathered once, so a pass only pairs them with its scales. The tensors must keep their storage
    in between (they do within a step) and `serves` must hold for them."""

    def __init__(self, tensors: Sequence[torch.Tensor], keys: Sequence[int], first_words: Sequence[int] | None = None) -> None:
        words = first_words or [0] * len(tensors)
        self.items = [(t.data_ptr(), t.numel(), w, k) for t, k, w in zip(tensors, keys, words, strict=True)]
        self.total = sum(item[1] for item in self.items)

    def add_(self, scales: Sequence[float]) -> None:
        _run(_rng_native.add_streams, [(*item, s) for item, s in zip(self.items, scales, strict=True) if s != 0.0],
             self.total)


def add_sequences_(tensors: Sequence[torch.Tensor], keys: Sequence[Sequence[int]], scales: Sequence[Sequence[float]],
                   first_words: Sequence[int] | None = None) -> None:
    """For each tensor, its pairs in order: t += s_p * z(k_p), rounded to float32 after every add as
    separate passes would be, in one pass over its memory (a round's replay, or a client's catch-up);
    `serves` must hold. Zero scales are skipped, as the per-pass path skips them."""
    words = first_words or [0] * len(tensors)
    items = []
    for t, ks, ss, w in zip(tensors, keys, scales, words, strict=True):
        live = [(k, s) for k, s in zip(ks, ss, strict=True) if s != 0.0]
        if live:
            k, s = zip(*live, strict=True)
            items.append((t.data_ptr(), t.numel(), w, np.array(k, np.uint64).tobytes(), np.array(s, np.float32).tobytes()))
    _run(_rng_native.add_sequences, items)


# Threads: the loop releases the GIL, so torch's thread count (OMP_NUM_THREADS, torch.set_num_threads)
# is honoured by cutting the pass into word-aligned pieces run on a pool. Below _PARALLEL_MIN elements a
# pass stays on the calling thread: the pool's hand-off (~50 us) would cost more than it saves.
_PARALLEL_MIN = 1 << 21
_pools: dict[int, ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_pools.clear)  # a forked child has none of the pool's threads


def _run(fn, items: list[tuple], total: int | None = None) -> None:
    threads = torch.get_num_threads()
    total = sum(item[1] for item in items) if total is None else total
    if threads < 2 or total < _PARALLEL_MIN:
        fn(items)
        return
    pool = _pools.get(threads) or _pools.setdefault(threads, ThreadPoolExecutor(threads, "zorba-rng"))
    for done in [pool.submit(fn, part) for part in _split(items, threads, total)]:
        done.result()


def _split(items: list[tuple], parts: int, total: int) -> list[list[tuple]]:
    """`parts` lists of about total / parts elements each; a tensor cut at a word boundary keeps its
    stream position through the item's first word (field 2) and address (field 0, float32 bytes)."""
    share = (total + parts - 1) // parts
    out: list[list[tuple]] = [[]]
    room = share
    for address, numel, first_word, *rest in items:
        start = 0
        while start < numel:
            n = numel - start
            if n > room:  # cut inside the tensor: at a whole word, so the piece's stream starts at a word
                n = max(32, room // 32 * 32)
            out[-1].append((address + 4 * start, n, first_word + start // 32, *rest))
            start, room = start + n, room - n
            if room <= 0:
                out.append([])
                room = share
    return [part for part in out if part]
