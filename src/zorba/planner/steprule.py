"""The step-size rule: a client's step grows as the set of weights it perturbs shrinks.

ZO-SGD with z on d active coordinates moves the weights by lr * g * z, whose squared length is
about d * |grad|^2: the safe step falls like 1/d (docs/theory.md A2). A client that
perturbs a quarter of the model can therefore take a larger step than one that perturbs all of it.
The factor is s_n = (D / d_n)^gamma, with D the whole model's size and d_n the client's active size,
so "all blocks" keeps the configured lr exactly (s = 1) and gamma = 0 is one lr for every plan.
The server puts lr * s_n in the client's plan and s_n in the log entry, so replay is bit-exact.
Pure arithmetic: no torch, no I/O."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepRule:
    sizes: tuple[float, ...]  # parameters per block
    exponent: float = 0.5  # gamma

    def scale(self, blocks: Sequence[int]) -> float:
        """s = (D / d)^gamma for the blocks a client perturbs (1.0 for an empty set: it takes no step)."""
        active = sum(self.sizes[b] for b in blocks)
        if self.exponent == 0.0 or active <= 0:
            return 1.0
        return float((sum(self.sizes) / active) ** self.exponent)

