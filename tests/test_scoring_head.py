"""Causal scoring applies the LM head to the verbaliser position only: same class logits as the full
forward (up to matmul blocking in the last bits), without vocabulary logits at every position."""

import pytest
import torch

import zorba.core.scoring as scoring
from zorba.core.models import load_model
from zorba.core.scoring import Scorer
from zorba.core.tasks import get_task
from zorba.memory.precision import make_client_replica

SEQS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18]]


@pytest.mark.parametrize("family", ["opt", "llama", "gpt2"])
@pytest.mark.parametrize("tiered", [False, True])
def test_last_position_head_matches_full_logits(tiny_models, monkeypatch, family, tiered):
    lm = load_model(str(tiny_models[family]))
    if tiered:  # bf16-frozen weights with upcast hooks, as a client holds them
        make_client_replica(lm, "bf16", "memory")
    scorer = Scorer(lm, get_task("sst2"), 32)
    assert lm.model.config.model_type in scoring._PLAIN_HEAD
    fast = scorer.logits(SEQS)
    monkeypatch.setattr(scoring, "_PLAIN_HEAD", frozenset())
    full = scorer.logits(SEQS)
    assert fast.shape == (3, 2)
    torch.testing.assert_close(fast, full, rtol=0, atol=1e-5)
