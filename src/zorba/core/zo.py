"""Zeroth-order SPSA on a subset of blocks, in place: perturb, evaluate, restore and update without
storing z (it is regenerated from its seed) and without touching inactive blocks.

Each pass over the active weights is one `add_noise_many_` call for all active tensors (small ones
hashed together); on the CPU the first pass of a perturbation hashes the small tensors' z with the
large ones' and keeps it for the other passes. With `cache_z=True` the current perturbation's z is
generated once into fp32 buffers and reused by its +mu, -2mu and restore/update passes: faster, at
the cost of 4 bytes per active parameter (docs/performance.md). Both paths give bit-identical weights.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from zorba.core import rng_native
from zorba.core.deferred import DeferredTables
from zorba.core.packed import PackedSmallTensors
from zorba.core.rng import (
    PACK_LIMIT,
    add_noise_many_,
    add_noise_many_keeping_,
    fused_pass,
    noise,
    noise_small,
    packed_noise,
    packed_views,
)
from zorba.wire.protocol import StepReport, stream_key, stream_keys, to_f32

BlockTensors = Sequence[Sequence[torch.Tensor]]


def add_scaled_noise_(
    tensors: BlockTensors, blocks: Sequence[int], sseed: int, perturbation: int, scales: dict[int, float], dist: str
) -> None:
    """w_l += scales[l] * z_l for each listed block; each tensor gets exactly one add (replay order
    across tensors is irrelevant: a tensor's own sequence of adds is what replay must reproduce)."""
    _Streams(tensors, blocks, sseed, perturbation, dist).add_(scales)  # reads scales[b] for the listed blocks


class _Streams:
    """The active tensors of one perturbation with their stream keys, derived once: a step makes
    three passes with the same keys, and on a GPU hashing ~100 keys per pass is host time that the
    one fused launch would otherwise wait for. On the CPU with the compiled loop (rng_native.py) each
    pass is one call for all tensors. Off both, z of the small tensors (biases,
    norms, small tables: under rng.PACK_LIMIT elements each) is generated on the first pass and kept
    for the other two, since for them the per-call cost of hashing dominates, not memory; when a
    round has packed them into one buffer (packed.py), each pass over them is a single add."""

    def __init__(
        self, tensors: BlockTensors, blocks: Sequence[int], sseed: int, j: int, dist: str,
        deferred: DeferredTables | None = None, packed: PackedSmallTensors | None = None,
    ) -> None:
        owned = [(b, i, t) for b in blocks for i, t in enumerate(tensors[b])]
        self.blocks = [b for b, _, _ in owned]
        self.tensors = [t for _, _, t in owned]
        self.keys = stream_keys(sseed, j, [(b, i) for b, i, _ in owned])
        self.dist = dist
        self.deferred = deferred
        if deferred is None:  # the common case, without a comprehension per tensor
            self.deferred_ids, self.eager_ids = [], list(range(len(self.tensors)))
            eager_tensors, eager_keys = self.tensors, self.keys
        else:
            queued = [deferred.owns(t) for t in self.tensors]
            self.deferred_ids = [i for i, q in enumerate(queued) if q]
            self.eager_ids = [i for i, q in enumerate(queued) if not q]
            eager_tensors, eager_keys = [self.tensors[i] for i in self.eager_ids], [self.keys[i] for i in self.eager_ids]
        rademacher = dist == "rademacher" and bool(eager_tensors)  # the fused kernel draws Rademacher z only
        self.fused = fused_pass(eager_tensors, eager_keys) if rademacher else None
        # The compiled CPU loop adds a small tensor's z for the price of a call (rng_native.py):
        # nothing is worth keeping across passes then, and each pass is one call for all tensors.
        native = self.fused is None and dist == "rademacher" and rng_native.serves(eager_tensors)
        self.native = rng_native.Passes(eager_tensors, eager_keys) if native else None
        small = [not native and self.fused is None and t.numel() < PACK_LIMIT for t in eager_tensors]
        self.small_ids = [i for i, s in zip(self.eager_ids, small, strict=True) if s]
        self.large_ids = [i for i, s in zip(self.eager_ids, small, strict=True) if not s]
        self.small_z: list[torch.Tensor] | None = None
        self.packed, self.packed_z = None, None
        if packed is not None and self.small_ids and dist == "rademacher":
            order = packed.order([self.tensors[i] for i in self.small_ids])
            if order is not None:  # the small tensors live in one buffer: one add per pass
                self.packed, self.small_ids = packed, [self.small_ids[k] for k in order]

    def add_(self, scales: dict[int, float] | float) -> None:
        per = [scales[b] for b in self.blocks] if isinstance(scales, dict) else [scales] * len(self.tensors)
        if self.native is not None:  # one compiled call for all
            self.native.add_([per[i] for i in self.eager_ids])
            done = True
        else:  # one launch for all, unless the kernel cannot be built here
            done = self.fused is not None and self.fused([per[i] for i in self.eager_ids])
        large = [] if done else self.large_ids
        if self.small_ids and self.packed_z is None and self._small_z_with_large():
            self._add_making_small_z_(large, per)
        else:
            if large:
                add_noise_many_([self.tensors[i] for i in large], [self.keys[i] for i in large],
                                [per[i] for i in large], self.dist)
            if self.small_ids:
                self._add_small_(per)
        for i in self.deferred_ids:
            self.deferred.push(self.tensors[i], self.keys[i], per[i])

    def _small_z_with_large(self) -> bool:
        """Whether the first pass hashes the small tensors' z with the large ones (Rademacher, CPU):
        a generation of their own costs a dozen more calls, each slow from the caches the pass before
        evicted (docs/performance.md)."""
        return self.dist == "rademacher" and self.tensors[self.small_ids[0]].is_cpu

    def _add_making_small_z_(self, large: Sequence[int], per: Sequence[float]) -> None:
        """The first pass: every tensor's add, with the small tensors' z made by the same hash calls as
        the large ones' and kept (packed) for the other passes; packed small tensors get their add as
        the one add of their buffer."""
        one_add = self._one_packed_add(per)
        small = [0.0] * len(self.small_ids) if one_add else [per[i] for i in self.small_ids]
        ids = self.small_ids + list(large)
        self.packed_z = add_noise_many_keeping_([self.tensors[i] for i in ids], [self.keys[i] for i in ids],
                                                small + [per[i] for i in large], len(self.small_ids))
        if one_add:
            self._add_packed_(per[self.small_ids[0]])

    def _one_packed_add(self, per: Sequence[float]) -> bool:
        """Whether the small tensors live in one packed buffer and share one scale: one add for all."""
        scale = per[self.small_ids[0]]
        return self.packed is not None and all(per[i] == scale for i in self.small_ids)

    def _small_sizes(self) -> list[int]:
        return self.packed.sizes if self.packed is not None else [self.tensors[i].numel() for i in self.small_ids]

    @torch.no_grad()
    def _add_small_(self, per: Sequence[float]) -> None:
        if self._one_packed_add(per):
            self._add_packed_(per[self.small_ids[0]])
            return
        if self.small_z is None:
            self.small_z = self._small_noise()
        groups: dict[float, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}
        for i, z in zip(self.small_ids, self.small_z, strict=True):
            t = self.tensors[i]
            if per[i] != 0.0 and t.dtype == torch.float32:
                ts, zs = groups.setdefault(per[i], ([], []))
                ts.append(t if t.dim() == 1 else t.view(-1))
                zs.append(z)
            elif per[i] != 0.0:
                t.view(-1).add_(z.to(t.dtype), alpha=per[i])
        for s, (ts, zs) in groups.items():  # one call per scale: elementwise t + s * z, as add_
            torch._foreach_add_(ts, zs, alpha=s)

    def _small_noise(self) -> list[torch.Tensor]:
        sizes, keys = self._small_sizes(), [self.keys[i] for i in self.small_ids]
        if self.dist != "rademacher":
            device = self.tensors[self.small_ids[0]].device
            return [noise(n, k, self.dist, device) for n, k in zip(sizes, keys, strict=True)]
        if self.packed_z is not None:  # made by the first pass, with the large tensors' hash
            return packed_views(self.packed_z, sizes)
        return noise_small(sizes, keys, self.tensors[self.small_ids[0]].device)

    def _add_packed_(self, scale: float) -> None:
        if self.packed_z is None:
            self.packed_z, _ = packed_noise(self.packed.sizes, [self.keys[i] for i in self.small_ids])
        if scale != 0.0:
            self.packed.add_(self.packed_z, scale)


class _CachedNoise:
    """z of one perturbation for the active tensors, generated once (the cache_z option)."""

    def __init__(self, tensors: BlockTensors, blocks: Sequence[int], sseed: int, j: int, dist: str) -> None:
        self.pairs = []
        for b in blocks:
            for i, t in enumerate(tensors[b]):
                z = torch.zeros(t.shape, dtype=torch.float32, device=t.device)
                add_noise_many_([z], [stream_key(sseed, j, b, i)], [1.0], dist)
                self.pairs.append((t, z))

    @torch.no_grad()
    def add_(self, scale: float) -> None:
        for t, z in self.pairs:
            t.add_(z if z.dtype == t.dtype else z.to(t.dtype), alpha=scale)


def spsa_step(
    loss: Callable[[], float],
    tensors: BlockTensors,
    blocks: Sequence[int],
    sseed: int,
    mu: float,
    lr: float,
    q: int = 1,
    dist: str = "rademacher",
    cache_z: bool = False,
    deferred: DeferredTables | None = None,
    packed: PackedSmallTensors | None = None,
) -> tuple[StepReport, float]:
    """One local ZO-SGD step; returns the step's report and the mean of its perturbed losses.

    Each perturbation j: w + mu z_j, evaluate; w - mu z_j, evaluate; g_j = (L+ - L-) / (2 mu). All q
    are evaluated at the same w, then w -= lr/q * sum_j g_j z_j. The restore of the last perturbation
    is fused with its update (one pass fewer over the active weights).
    """
    blocks = sorted(blocks)
    scalars, losses = [], []

    def regenerate(j: int) -> Callable[[float], None]:
        if cache_z:
            return _Streams(tensors, blocks, sseed, j, dist).add_
        return _Streams(tensors, blocks, sseed, j, dist, deferred, packed).add_

    for j in range(q):
        shift = _CachedNoise(tensors, blocks, sseed, j, dist).add_ if cache_z else regenerate(j)
        shift(mu)
        plus = loss()
        shift(-2.0 * mu)
        minus = loss()
        g = to_f32((plus - minus) / (2.0 * mu))
        scalars.append(g)
        losses += [plus, minus]
        shift(mu - lr * g / q if j == q - 1 else mu)
        del shift  # frees the cached z before the next perturbation allocates its own
    for j in range(q - 1):
        regenerate(j)(-lr * scalars[j] / q)
    return StepReport(sseed, tuple(scalars)), float(np.mean(losses))
