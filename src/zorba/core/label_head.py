"""A label head: one offset vector per class, added to the class ends of the scorer, zero at start.

The scorer compares each example's features with one vector per class: the pooled label sentence for
an encoder, the label word's output embedding for a causal LM (scoring.py). The head adds a learned
offset to each class vector, so at zero it is the zero-shot scorer exactly. It is a block of its own
(blocks.py), num_labels x hidden weights: 768 for MiniLM on SST-2 against 22.7M in the encoder.

Why it exists: a client that perturbs only the head sees a frozen encoder, so it computes its
examples' features once a round and then takes many ZO steps on them for almost nothing (client.py).
docs/theory.md A9 derives it; docs/results.md measures it."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from zorba.core.blocks import LABEL_HEAD_MODULE, split_into_blocks
from zorba.core.models import LoadedModel, resolve_source
from zorba.errors import UserError

OFFSET_KEY = f"{LABEL_HEAD_MODULE}.offset"


class LabelHead(nn.Module):
    def __init__(self, num_labels: int, width: int) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(num_labels, width), requires_grad=False)


def class_width(model: nn.Module, kind: str) -> int:
    """The width of the vectors the scorer compares: hidden size (encoder), output-embedding width
    (causal). Shapes only: it works on a model whose parameters are still on the meta device."""
    if kind == "causal":
        return int(model.get_output_embeddings().weight.shape[1])
    return int(model.config.hidden_size)


def attach_label_head(lm: LoadedModel, num_labels: int) -> LoadedModel:
    """Give the model a label head (idempotent) and re-split its blocks: the head is the last one. It
    starts at zero, or where a model zorba exported left it (`saved_offset`)."""
    if getattr(lm.model, LABEL_HEAD_MODULE, None) is None:
        head = LabelHead(num_labels, class_width(lm.model, lm.kind))
        saved = saved_offset(lm.source)
        if saved is not None:
            if saved.shape != head.offset.shape:
                raise UserError(f"model {lm.source!r}: its label head is {tuple(saved.shape)}, this task needs "
                                f"{tuple(head.offset.shape)}")
            head.offset.data.copy_(saved)
        lm.model.add_module(LABEL_HEAD_MODULE, head.to(next(lm.model.parameters()).device))
    lm.blocks = split_into_blocks(lm.model)
    return lm


def saved_offset(source: str) -> torch.Tensor | None:
    """The label head a model folder exported by zorba holds (from_pretrained drops it as unexpected)."""
    folder = Path(resolve_source(source))
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            if OFFSET_KEY in f.keys():
                return f.get_tensor(OFFSET_KEY).float()
    return None


def label_head_of(model: nn.Module) -> LabelHead | None:
    return getattr(model, LABEL_HEAD_MODULE, None)
