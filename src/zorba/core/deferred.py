"""Deferred perturbation of embedding tables: a ZO step touches only the rows a batch looks up.

A ZO step makes three passes over every active tensor (+mu z, -2 mu z, then restore and update). For
a word-embedding table that is most of the work while the forward reads a few hundred of its rows:
MiniLM's table is half the model, a tiny model's nearly all of it (docs/performance.md, A1). The
adds are elementwise, so instead of applying them to the table we queue them as (key, scale) pairs and
apply the queue to the looked-up rows inside the embedding's forward, in order, with the same fp32
`add_` per element. The forward therefore sees bit-for-bit the rows the eager passes would have
produced, and the scalars the client reports are unchanged.

A client's local weights are thrown away at the end of the round (it restores the round-start
weights and replays the log), so the queue is usually discarded, never applied to the whole table.
If the queue grows until replaying it on the looked-up rows would cost more than one pass over the
table, it is applied to the table (flushed) first. Leaving the context flushes unless `discard()` was
called, so the weights are always what eager passes would give.

Only large untied nn.Embedding tables in fp32 on a CPU qualify: a table shared with an LM head is read
whole; position / token-type tables are small and looked up nearly whole by every batch; on a GPU the
fused kernel (rng_triton.py) passes over a table in one launch, cheaper than the row bookkeeping here
(a unique, a hash and one add per queued pair, each a launch).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from zorba.core import rng_native
from zorba.core.rng import add_noise_sequences_, rademacher_rows

_MIN_ROWS = 4096  # smaller tables are perturbed eagerly
# With the compiled CPU loop (rng_native.py) a pass costs ~0.15 ns an element, and a table under
# ~4M elements is cheaper to perturb eagerly than to look up row by row (tiny BERT's 1M-element table:
# a step in a client round 1.18 -> 1.08 x two forwards; MiniLM's 11.7M and OPT-125m's 38.6M stay
# deferred, 1-2% faster that way; docs/performance.md).
_MIN_ELEMENTS_NATIVE = 1 << 22
_Z_ELEMENTS = 1 << 20  # z generated per call for queued adds (bounds the transient to 4 MiB)


class _Table:
    """One embedding table and its queued adds."""

    def __init__(self, module: nn.Embedding) -> None:
        self.module = module
        self.pending: list[tuple[int, float]] = []
        self.handle = module.register_forward_hook(self._lookup)
        # The looked-up rows with the first `done` queued adds applied: the two forwards of a step
        # share a batch, so the second one only applies the adds made in between.
        self.cached: tuple[torch.Tensor, torch.Tensor, int] | None = None

    def flush(self) -> None:
        if self.pending:
            keys, scales = zip(*self.pending, strict=True)
            add_noise_sequences_([self.module.weight.data], [list(keys)], [list(scales)])
        self.drop()

    def drop(self) -> None:
        self.pending, self.cached = [], None

    @torch.no_grad()
    def _lookup(self, module: nn.Embedding, args, output: torch.Tensor) -> torch.Tensor:
        if not self.pending:
            return output
        ids = args[0]
        used, where = torch.unique(ids, return_inverse=True)
        if len(self.pending) * used.numel() > module.num_embeddings:  # a table pass is cheaper now
            self.flush()
            return F.embedding(ids, module.weight, module.padding_idx)
        reusable = self.cached is not None and self.cached[1].is_inference() == torch.is_inference_mode_enabled()
        if reusable and torch.equal(self.cached[0], used):  # (inference tensors only change in inference mode)
            rows, done = self.cached[1], self.cached[2]
        else:
            rows, done = module.weight.detach()[used], 0
        self._apply(rows, used, self.pending[done:])
        self.cached = (used, rows, len(self.pending))
        return rows[where]

    @staticmethod
    def _apply(rows: torch.Tensor, used: torch.Tensor, ops: list[tuple[int, float]]) -> None:
        """rows += s * z(key) rows, op by op in order (the same fp32 add_ as the eager pass)."""
        per_call = max(1, _Z_ELEMENTS // max(rows.numel(), 1))
        for start in range(0, len(ops), per_call):
            group = ops[start : start + per_call]
            z = rademacher_rows([k for k, _ in group], used, rows.shape[1])
            for zi, (_, scale) in zip(z, group, strict=True):
                rows.add_(zi, alpha=scale)


class DeferredTables:
    """Queues the ZO adds of eligible embedding tables among `tensors`; use as a context manager.

    `owns(t)` tells spsa_step which tensors to leave to it; `push(t, key, scale)` queues an add.
    """

    def __init__(self, model: nn.Module, tensors: Iterable[torch.Tensor], dist: str = "rademacher") -> None:
        self.tables: dict[int, _Table] = {}
        if dist != "rademacher":  # the row generator is Rademacher's; Gaussian z stays eager
            return
        wanted = {id(t) for t in tensors}
        for module in _untied_embeddings(model):
            if id(module.weight) in wanted:
                self.tables[id(module.weight)] = _Table(module)

    def owns(self, tensor: torch.Tensor) -> bool:
        return id(tensor) in self.tables

    def push(self, tensor: torch.Tensor, key: int, scale: float) -> None:
        if scale != 0.0:  # eager passes skip zero scales too (w + 0 * z can turn -0.0 into +0.0)
            self.tables[id(tensor)].pending.append((key, scale))

    def flush(self) -> None:
        for table in self.tables.values():
            table.flush()

    def discard(self) -> None:
        """Drop the queued adds: the caller is about to restore the round-start weights anyway."""
        for table in self.tables.values():
            table.drop()

    def close(self) -> None:
        self.flush()
        for table in self.tables.values():
            table.handle.remove()
        self.tables = {}

    def __enter__(self) -> DeferredTables:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _untied_embeddings(model: nn.Module) -> Sequence[nn.Embedding]:
    """Large fp32 CPU nn.Embedding modules whose weight no other module uses and that never renormalise rows."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    return [
        m for m in model.modules()
        if type(m) is nn.Embedding and m.num_embeddings >= _MIN_ROWS and m.max_norm is None
        and (m.weight.numel() >= _MIN_ELEMENTS_NATIVE or not rng_native.usable())
        and uses.get(id(m.weight), 0) == 1
        and m.weight.dtype == torch.float32 and m.weight.is_contiguous() and m.weight.device.type == "cpu"
    ]
