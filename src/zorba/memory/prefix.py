"""A ZO step's forwards share their frozen prefix: the layers before the first trainable one.

With blocks activated per client, a client often trains a late layer only. Its two forwards (w + mu z
and w - mu z) on the step's batch then compute exactly the same embeddings and early layers: none of
their weights moves within the step. `SharedPrefix.shared(loss)` wraps a step's loss: the first call
runs the whole forward and keeps the output of the deepest layer reached before any module owning an
active parameter ran; every later call (the -mu forward, further perturbations of the step) has those
layers return the kept output instead of computing it. The losses are bit-identical to full forwards:
the skipped layers would compute the same values from the same inputs and weights. A client with
layer l of L active pays l / L of a forward once instead of twice (docs/performance.md).

What it relies on, each checked rather than assumed:
- eval mode (no dropout: otherwise the two forwards differ by design);
- a module that owns an active parameter runs its forward before anything reads that parameter
  (forward pre-hooks mark the prefix as ended); parameters read outside any module's forward before
  the layers would be missed, which no supported family does (tests/test_prefix.py);
- each layer runs once per forward (a model that reuses a layer module, e.g. ALBERT's shared layer,
  turns sharing off for the round).
Kept output: one clone of a layer's output (batch x sequence x hidden) per shared loss alive, returned
as a fresh clone on every replay so no caller can modify the kept copy.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.utils._pytree import tree_map_only

from zorba.core.blocks import find_layer_list


def _clone(output):
    return tree_map_only(torch.Tensor, torch.Tensor.clone, output)


class _Slot:
    """One shared loss's state: how often it ran, and the layer output its first forward kept."""

    def __init__(self) -> None:
        self.calls = 0
        self.kept: tuple[int, object] | None = None  # (deepest shareable layer, its output)


class SharedPrefix:
    """Context manager for a round: hooks on the model's layers and on the modules owning `active`."""

    def __init__(self, model: nn.Module, active: Sequence[torch.Tensor]) -> None:
        self.model = model
        self.layers = list(model.get_submodule(find_layer_list(model)))
        ids = {id(t) for t in active}
        owners = [m for m in model.modules() if any(id(p) in ids for p in m.parameters(recurse=False))]
        self._handles = [m.register_forward_pre_hook(self._active_ran) for m in owners]
        self._handles += [layer.register_forward_hook(self._layer_ran(i)) for i, layer in enumerate(self.layers)]
        self.reused = 0  # forwards that skipped layers (tests and benchmarks read it)
        self._slot: _Slot | None = None  # the shared loss whose first forward is running
        self._ended = False
        self._calls = [0] * len(self.layers)
        self._off = False

    def _active_ran(self, module: nn.Module, args) -> None:
        self._ended = True

    def _layer_ran(self, i: int):
        def hook(module: nn.Module, args, output) -> None:
            if self._slot is None:
                return
            self._calls[i] += 1
            if not self._ended:
                self._slot.kept = (i, _clone(output))  # the shallower one it replaces is freed

        return hook

    def shared(self, loss: Callable[[], float]) -> Callable[[], float]:
        """`loss` (one batch, fixed frozen weights) whose calls after the first reuse the frozen prefix.
        Each shared loss keeps its own layer output, so several may be used in turn (two batches at
        the same weights)."""
        slot = _Slot()

        def run() -> float:
            slot.calls += 1
            return self._record(loss, slot) if slot.calls == 1 else self._replay(loss, slot)

        return run

    def _record(self, loss: Callable[[], float], slot: _Slot) -> float:
        self._ended, self._calls = False, [0] * len(self.layers)
        self._slot = slot if not self._off and not self.model.training else None
        try:
            return loss()
        finally:
            self._slot = None
            if any(c > 1 for c in self._calls):  # a layer module reused within one forward
                self._off, slot.kept = True, None

    def _replay(self, loss: Callable[[], float], slot: _Slot) -> float:
        if slot.kept is None or self._off:
            return loss()
        deepest, output = slot.kept
        skipped = self.layers[: deepest + 1]
        # A layer may already carry an instance-level forward (accelerate's offload hooks set one):
        # put back exactly what was there.
        before = [layer.__dict__.get("forward") for layer in skipped]
        for layer in skipped:
            layer.forward = lambda *args, **kwargs: _clone(output)
        try:
            self.reused += 1
            return loss()
        finally:
            for layer, forward in zip(skipped, before, strict=True):
                if forward is None:
                    del layer.forward
                else:
                    layer.forward = forward

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self) -> SharedPrefix:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
