"""Split a model's parameters into an ordered list of blocks: embeddings, each layer, head.

The transformer layers are found structurally (the largest nn.ModuleList of same-typed modules), so
OPT, Llama/Qwen, GPT-2, BERT and most other families work without a per-checkpoint list.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

_EMBED_MARKERS = ("embed", "wte", "wpe", "word_embeddings", "position")
LABEL_HEAD_MODULE = "zorba_label_head"  # label_head.py attaches it; always a block of its own, the last


@dataclass(frozen=True)
class Block:
    name: str
    param_names: tuple[str, ...]
    numel: int


def find_layer_list(model: nn.Module) -> str:
    """Dotted name of the ModuleList holding the transformer layers."""
    best, best_size = None, 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) == 0:
            continue
        if len({type(m) for m in module}) != 1:
            continue
        size = sum(p.numel() for p in module.parameters())
        if size > best_size:
            best, best_size = name, size
    if best is None:
        raise ValueError(f"{type(model).__name__}: no list of transformer layers found")
    return best


def _layer_index(param_name: str, prefix: str) -> int | None:
    if not param_name.startswith(prefix + "."):
        return None
    return int(param_name[len(prefix) + 1 :].split(".", 1)[0])


def split_into_blocks(model: nn.Module) -> list[Block]:
    """Blocks in forward order; tied parameters appear once (named_parameters de-duplicates)."""
    prefix = find_layer_list(model)
    embeddings, head, layers, label_head = [], [], {}, []
    for name, param in model.named_parameters():
        idx = _layer_index(name, prefix)
        if name.startswith(LABEL_HEAD_MODULE + "."):
            label_head.append((name, param))
        elif idx is not None:
            layers.setdefault(idx, []).append((name, param))
        elif any(marker in name for marker in _EMBED_MARKERS):
            embeddings.append((name, param))
        else:
            head.append((name, param))
    groups = [("embeddings", embeddings)]
    groups += [(f"layer.{i}", layers[i]) for i in sorted(layers)]
    groups += [("head", head), ("label_head", label_head)]
    return [
        Block(name, tuple(n for n, _ in params), sum(p.numel() for _, p in params))
        for name, params in groups
        if params
    ]


def block_tensors(model: nn.Module, blocks: list[Block]) -> list[list[torch.Tensor]]:
    """Per block, its parameter tensors in the block's fixed order (the replay order)."""
    params = dict(model.named_parameters())
    return [[params[n] for n in b.param_names] for b in blocks]
