"""Small tensors packed into one buffer for a round: one add moves every bias and norm of the active
blocks.

A ZO step makes three passes over the active weights. Off the GPU, the small tensors (biases, norms,
position tables: under rng.PACK_LIMIT elements) already share one packed generation of z, but each
still costs one add per pass, and a tiny model has dozens of them: ~1.4 us each, 50 us a pass, a
tenth of a 1.5 ms forward (docs/performance.md, A1). Here the active small fp32 tensors are moved,
for the duration of a client's round, into one buffer laid out exactly like the packed z
(`rng.pack_offsets`: each tensor at a whole-word offset, the gaps unused), so a pass is one add of the
packed z to the buffer. The parameters become views of the buffer (`param.data`), and get storage of
their own again on close, so nothing outside the round sees the aliasing. The adds are the same fp32
`w + s * z` per element as tensor by tensor: weights stay bit-identical (tests/test_packed.py).

CPU only, and only on rng.py's torch path: on a GPU the fused kernel (rng_triton.py), and on a CPU
with the compiled loop (rng_native.py), a whole pass is one call anyway, so nothing is packed there.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from zorba.core import rng_native
from zorba.core.rng import PACK_LIMIT, fits_one_pack, pack_offsets


class PackedSmallTensors:
    """Moves the eligible tensors among `tensors` into one buffer until `close()`; a context manager."""

    def __init__(self, tensors: Iterable[torch.Tensor]) -> None:
        self.members: list[torch.Tensor] = [t for t in _unique(tensors) if _eligible(t)]
        self.sizes = [t.numel() for t in self.members]
        self.buffer: torch.Tensor | None = None
        if len(self.members) < 2 or not fits_one_pack(self.sizes) or rng_native.usable():  # nothing to gain
            self.members, self.sizes = [], []
            return
        offsets, words = pack_offsets(self.sizes)
        self.buffer = torch.zeros(32 * words, dtype=torch.float32)
        for t, off in zip(self.members, offsets, strict=True):
            view = self.buffer[32 * off : 32 * off + t.numel()]
            view.copy_(t.data.view(-1))
            t.data = view.view(t.shape)
        self._ids = [id(t) for t in self.members]

    def order(self, tensors: Sequence[torch.Tensor]) -> list[int] | None:
        """Positions in `tensors` of the packed tensors, in packed order; None unless `tensors` are
        exactly the packed ones (in any order)."""
        where = {id(t): i for i, t in enumerate(tensors)}
        if self.buffer is None or len(where) != len(tensors) or set(where) != set(self._ids):
            return None
        return [where[i] for i in self._ids]

    @torch.no_grad()
    def add_(self, z: torch.Tensor, scale: float) -> None:
        """Every packed tensor += scale * its z, with z laid out as rng.packed_noise gives it."""
        self.buffer.add_(z, alpha=scale)

    def close(self) -> None:
        for t in self.members:
            t.data = t.data.clone()  # storage of its own again
        self.members, self.buffer = [], None

    def __enter__(self) -> PackedSmallTensors:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unique(tensors: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def _eligible(t: torch.Tensor) -> bool:
    return (t.device.type == "cpu" and t.dtype == torch.float32 and 0 < t.numel() < PACK_LIMIT
            and t.is_contiguous())
