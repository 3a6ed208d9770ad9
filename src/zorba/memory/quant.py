"""Weight-only int8 for frozen blocks: symmetric, one fp32 scale per row.

A frozen block is never trained by the client that holds it, and its working copy is re-derived from
the exact fp32 store whenever the log changes it (precision.TieredReplica), so quantisation error
never accumulates: each forward sees round-to-nearest(w / s) * s of the current global weights. Rows
are output features of a Linear and vocabulary entries of an Embedding, so the forward paths in
precision.py dequantise a Linear a block of rows at a time and an Embedding only the rows it looks up.
Per-row absmax is the weight side of LLM.int8() and of bitsandbytes' `Int8Params`. We keep it in plain
torch ops (two of them each way) rather than depend on bitsandbytes: the weights are re-quantised from
our own store after every replay, on CPU and GPU clients alike, and a forward only needs a
dequantise-then-matmul per module, not int8 matmul kernels with their own storage format.
"""

from __future__ import annotations

import torch
from torch import nn

INT8_MAX = 127  # symmetric range: -128 is never used, so negation is exact
SCALE_ATTR = "zorba_int8_scale"  # per-row fp32 scales, kept on the parameter itself (tied weights share it)


def quantize_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(q, scale) with w ~= q * scale[:, None] and |w - q * scale| <= scale / 2 per element."""
    absmax = w.abs().amax(dim=1)
    scale = torch.where(absmax > 0, absmax / INT8_MAX, torch.ones_like(absmax))
    q = torch.round(w / scale.unsqueeze(1)).clamp_(-INT8_MAX, INT8_MAX).to(torch.int8)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """fp32 rows from int8 rows and their scales (scale has q's shape without the last dimension)."""
    return q.float().mul_(scale.unsqueeze(-1))


def int8_eligible(model: nn.Module) -> set[int]:
    """ids of the parameters that may be stored in int8: 2-D weights used *only* as the weight of exact
    nn.Linear or nn.Embedding modules, whose forwards precision.py replaces with dequantising ones. Any
    other owner (GPT-2's Conv1D, a positional-embedding subclass, a norm) keeps the parameter in bf16."""
    ok, other = set(), set()
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if name == "weight" and p.dim() == 2 and type(module) in (nn.Linear, nn.Embedding):
                ok.add(id(p))
            else:
                other.add(id(p))
    return ok - other


def fp32_rows(p: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
    """Rows of a low-precision weight as fp32: dequantised if int8, else upcast."""
    if p.dtype == torch.int8:
        return dequantize_rows(p[rows], getattr(p, SCALE_ATTR)[rows])
    return p[rows].float()
