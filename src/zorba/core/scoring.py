"""Turn a model into class logits for a task: verbaliser scoring for causal LMs, cosine scoring for
encoders. Everything the ZO loop needs is `loss(batch)`; evaluation needs `accuracy(examples)`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from zorba.core.label_head import label_head_of
from zorba.core.models import LoadedModel
from zorba.core.tasks import Example, Task

# Causal LMs whose logits are exactly head(backbone hidden state): no scaling or soft-capping after the
# head, so the head can be applied to the last position alone.
_PLAIN_HEAD = frozenset({"opt", "gpt2", "llama", "mistral", "qwen2", "qwen3", "gpt_neox"})
COSINE_SCALE = 20.0  # logit = scale * cos: sentence-transformers' usual temperature for contrastive training


class Scorer:
    """Tokenises once, then scores token-id batches on the (in-place perturbed) model."""

    def __init__(self, lm: LoadedModel, task: Task, max_len: int = 128) -> None:
        self.lm, self.task, self.max_len = lm, task, max_len
        tok = lm.tokenizer
        if lm.kind == "causal":
            self.label_ids = [tok(w, add_special_tokens=False)["input_ids"][0] for w in task.label_words]
            if len(set(self.label_ids)) != len(self.label_ids):
                raise ValueError(f"task {task.name}: label words share a first token under this tokenizer")
        else:
            self.label_seqs = [self._ids(s) for s in task.label_sentences]  # scored in every batch

    def _ids(self, text: str) -> list[int]:
        special = self.lm.kind == "encoder"
        ids = self.lm.tokenizer(text, add_special_tokens=special, truncation=True, max_length=self.max_len)
        return ids["input_ids"]

    def encode(self, examples: Sequence[Example]) -> list[list[int]]:
        """Token ids of each example's model input (prompt for causal LMs, text for encoders)."""
        fmt = self.task.causal_prompt if self.lm.kind == "causal" else self.task.encoder_input
        texts = [fmt(ex) for ex in examples]
        special = self.lm.kind == "encoder"
        if self.lm.kind == "causal":
            # Keep the end of a long prompt: the verbaliser position must survive truncation.
            self.lm.tokenizer.truncation_side = "left"
        out = self.lm.tokenizer(texts, add_special_tokens=special, truncation=True, max_length=self.max_len)
        return out["input_ids"]

    @property
    def device(self) -> torch.device:
        return next(self.lm.model.parameters()).device

    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        # Filled in numpy: a torch.tensor per row was an eighth of a tiny model's forward.
        width = max(len(s) for s in seqs)
        ids = np.full((len(seqs), width), self.lm.tokenizer.pad_token_id or 0, dtype=np.int64)
        mask = np.zeros((len(seqs), width), dtype=np.int64)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = s
            mask[i, : len(s)] = 1
        device = self.device
        return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)

    @torch.inference_mode()
    def logits(self, seqs: Sequence[Sequence[int]]) -> torch.Tensor:
        return self.class_logits(self.features(seqs))

    @torch.inference_mode()
    def features(self, seqs: Sequence[Sequence[int]]) -> Features:
        """Everything the class logits need from the model's body: with the label head's offset the
        only weight still to apply, a client that trains the head alone computes these once a round."""
        if self.lm.kind == "causal":
            return self._causal_features(seqs)
        return self._encoder_features(seqs)

    @torch.inference_mode()
    def class_logits(self, feats: Features) -> torch.Tensor:
        return self._class_logits(feats)

    def _class_logits(self, feats: Features) -> torch.Tensor:
        """Logits from features: the zero-shot scorer, plus the label head's offsets when the model has one."""
        head = label_head_of(self.lm.model)
        if self.lm.kind == "causal":
            if head is None:
                return feats.base
            return feats.base + feats.rows @ head.offset.to(feats.rows.dtype).T
        classes = feats.classes if head is None else F.normalize(feats.classes + head.offset.float(), dim=-1)
        return COSINE_SCALE * feats.rows @ classes.T

    def _causal_features(self, seqs: Sequence[Sequence[int]]) -> Features:
        # use_cache=False: scoring never generates, and the key/value cache a causal LM returns by
        # default would hold two activations per layer to the end of the forward (OPT-125m, batch
        # 16 x 64: 72 MiB, docs/memory.md).
        ids, mask = self._pad(seqs)
        last = mask.sum(dim=1) - 1
        rows = torch.arange(len(seqs), device=last.device)
        model = self.lm.model
        hidden = None
        if model.config.model_type in _PLAIN_HEAD:
            # Only the verbaliser position needs vocabulary logits: the head on one hidden state per
            # example instead of every position (OPT-125m, batch 16 x 64: 206 MB of logits, most of a
            # CPU forward's time, docs/performance.md).
            hidden = model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state[rows, last]
            final = model.get_output_embeddings()(hidden)
        elif label_head_of(model) is not None:
            out = model(input_ids=ids, attention_mask=mask, use_cache=False, output_hidden_states=True)
            final, hidden = out.logits[rows, last], out.hidden_states[-1][rows, last]
        else:
            final = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[rows, last]
        base = F.log_softmax(final.float(), dim=-1)[:, self.label_ids]
        return Features(hidden.float() if hidden is not None else None, None, base)

    def _encoder_features(self, seqs: Sequence[Sequence[int]]) -> Features:
        # Label sentences go through the same (perturbed) model in the same batch: both ends move.
        n_labels = len(self.label_seqs)
        ids, mask = self._pad(list(seqs) + self.label_seqs)
        hidden = self.lm.model(input_ids=ids, attention_mask=mask).last_hidden_state.float()
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = F.normalize((hidden * weights).sum(1) / weights.sum(1).clamp(min=1), dim=-1)
        return Features(pooled[:-n_labels], pooled[-n_labels:], None)

    @torch.inference_mode()
    def cached_loss(self, feats: Features, rows: Sequence[int], labels: Sequence[int]) -> float:
        """`loss` on precomputed features (the label head's weights are read now, the body's were then)."""
        return float(self.head_loss(feats, rows, labels))

    def head_loss(self, feats: Features, rows: Sequence[int], labels: Sequence[int]) -> torch.Tensor:
        """`cached_loss` as a tensor that autograd differentiates through the label head's offsets (the
        first-order head baseline); `feats` may come from inference mode, only `rows` of them are saved."""
        target = torch.as_tensor(list(labels), dtype=torch.long, device=feats.rows.device)
        return F.cross_entropy(self._class_logits(feats.select(rows)), target)

    def loss(self, seqs: Sequence[Sequence[int]], labels: Sequence[int]) -> float:
        """Mean cross-entropy over the class logits (the label words' log-likelihoods, renormalised)."""
        target = torch.as_tensor(list(labels), dtype=torch.long, device=self.device)
        return float(F.cross_entropy(self.logits(seqs), target))

    def accuracy(self, seqs: Sequence[Sequence[int]], labels: Sequence[int], batch_size: int = 64) -> float:
        return self.evaluate(seqs, labels, batch_size).accuracy

    def evaluate(self, seqs: Sequence[Sequence[int]], labels: Sequence[int], batch_size: int = 64) -> Evaluation:
        """Accuracy, mean cross-entropy and the predicted class of every example, from one pass."""
        preds, total = [], 0.0
        for start in range(0, len(seqs), batch_size):
            logits = self.logits(seqs[start : start + batch_size]).float().cpu()
            target = torch.as_tensor(list(labels[start : start + batch_size]), dtype=torch.long)
            total += float(F.cross_entropy(logits, target, reduction="sum"))
            preds.extend(int(p) for p in logits.argmax(dim=-1))
        n = max(len(seqs), 1)
        correct = sum(int(p == y) for p, y in zip(preds, labels, strict=True))
        return Evaluation(correct / n, total / n, preds)


@dataclass(frozen=True)
class Features:
    """Per example: `rows` (pooled text for an encoder, the verbaliser position's hidden state for a
    causal LM) and `base` (a causal LM's label log-likelihoods); `classes`: an encoder's label vectors."""

    rows: torch.Tensor | None
    classes: torch.Tensor | None
    base: torch.Tensor | None

    def select(self, idx: Sequence[int]) -> Features:
        pick = torch.as_tensor(list(idx), dtype=torch.long)
        return Features(
            self.rows[pick] if self.rows is not None else None, self.classes,
            self.base[pick] if self.base is not None else None,
        )

    @staticmethod
    def concat(parts: Sequence[Features]) -> Features:
        def cat(xs):
            return torch.cat(xs) if xs[0] is not None else None

        return Features(cat([p.rows for p in parts]), parts[0].classes, cat([p.base for p in parts]))


@dataclass(frozen=True)
class Evaluation:
    accuracy: float
    loss: float  # mean cross-entropy over the class logits
    predictions: list[int]
