"""A differentiable version of Scorer's loss for the first-order baselines.

Scorer.loss runs under torch.inference_mode (ZO never needs a graph), so backprop needs its own
forward. It reuses the Scorer's padding, label-word ids and label sentences, so both kinds of methods
optimise exactly the same objective: causal LMs = cross-entropy over the label words' log-probs at the
last prompt token; encoders = cross-entropy over COSINE_SCALE x cosine(mean-pooled text, mean-pooled
label sentence)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from zorba.core.scoring import COSINE_SCALE, Scorer


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def class_logits(scorer: Scorer, model: nn.Module, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    if scorer.lm.kind == "causal":
        return _causal_logits(scorer, model, seqs)
    return _encoder_logits(scorer, model, seqs)


def _causal_logits(scorer: Scorer, model: nn.Module, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    ids, mask = (t.to(_device(model)) for t in scorer._pad(seqs))
    out = model(input_ids=ids, attention_mask=mask, use_cache=False).logits  # as Scorer: no cache
    last = mask.sum(dim=1) - 1
    final = out[torch.arange(len(seqs), device=ids.device), last].float()
    return F.log_softmax(final, dim=-1)[:, scorer.label_ids]


def _encoder_logits(scorer: Scorer, model: nn.Module, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    # As in Scorer: label sentences share the batch, so gradients move both ends of the cosine.
    label_seqs = scorer.label_seqs
    ids, mask = (t.to(_device(model)) for t in scorer._pad(list(seqs) + label_seqs))
    hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    pooled = F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1), dim=-1)
    n_labels = len(label_seqs)
    return COSINE_SCALE * pooled[:-n_labels] @ pooled[-n_labels:].T


def loss_with_grad(scorer: Scorer, model: nn.Module, seqs: Sequence[Sequence[int]], labels: Sequence[int]) -> torch.Tensor:
    logits = class_logits(scorer, model, seqs)
    return F.cross_entropy(logits, torch.as_tensor(list(labels), dtype=torch.long, device=logits.device))
