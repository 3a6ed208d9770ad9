"""A step's forwards share the frozen prefix (prefix.py): the same losses and scalars bit for bit as
full forwards (the scalars are all the update is made of: seeds and scalars replay to the weights),
with the prefix layers really skipped, and no sharing where it would be wrong."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from zorba.core.scoring import Scorer
from zorba.core.tasks import get_task
from zorba.federation import client
from zorba.federation.client import ClientState, TokenizedData, run_round
from zorba.federation.memprobe import load_probe_model
from zorba.memory.precision import make_client_replica
from zorba.memory.prefix import SharedPrefix
from zorba.wire.protocol import Hyper, RoundPlan

FAMILIES = ("bert", "opt", "llama", "gpt2")


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    return load_probe_model(f"random:{request.param}-tiny")


class _NoSharing(SharedPrefix):
    def shared(self, loss):
        return loss


def _round(lm, blocks, monkeypatch, share: bool, precision: str = "bf16"):
    """One client round (3 steps, q = 2) on a fresh replica; its report and SharedPrefix. Within the
    round the local weights move (lr > 0), so later steps' forwards depend on earlier scalars."""
    made = []
    monkeypatch.setattr(client, "SharedPrefix", _Spy(made, SharedPrefix if share else _NoSharing))
    replica = make_client_replica(copy.deepcopy(lm), precision, "memory")
    scorer = Scorer(replica.lm, get_task("sst2"), 32)
    texts = [type("E", (), {"text_a": f"a fine film number {i} , or not .", "text_b": None})() for i in range(24)]
    data = TokenizedData(scorer.encode(texts), [i % 2 for i in range(24)])
    plan = RoundPlan(0, 0, tuple(blocks), 11, Hyper(lr=1e-2, mu=1e-3, q=2, local_steps=3, batch_size=8))
    report = run_round(plan, ClientState(0, np.arange(24)), replica, scorer, data)
    return report, made[0]


class _Spy:
    """Stands in for the SharedPrefix class in client.py and keeps the instance the round made."""

    def __init__(self, made, cls):
        self.made, self.cls = made, cls

    def __call__(self, *args):
        self.made.append(self.cls(*args))
        return self.made[-1]


def test_late_block_round_is_bit_identical_and_reuses_the_prefix(tiny, monkeypatch):
    late = [max(i for i, b in enumerate(tiny.blocks) if b.name.startswith("layer."))]  # the last layer
    shared, prefix = _round(tiny, late, monkeypatch, share=True)
    full, _ = _round(tiny, late, monkeypatch, share=False)
    assert shared.steps == full.steps and shared.loss == full.loss  # scalars are float32 values
    assert prefix.reused == 3 * (2 * 2 - 1)  # every forward of a step but its first


def test_int8_frozen_blocks_share_too(monkeypatch):
    lm = load_probe_model("random:opt-tiny")
    shared, prefix = _round(lm, [2], monkeypatch, share=True, precision="int8")
    full, _ = _round(lm, [2], monkeypatch, share=False, precision="int8")
    assert shared.steps == full.steps and shared.loss == full.loss and prefix.reused > 0


def test_no_prefix_when_the_embeddings_train(tiny, monkeypatch):
    blocks = [0, len(tiny.blocks) - 2]
    shared, prefix = _round(tiny, blocks, monkeypatch, share=True)
    full, _ = _round(tiny, blocks, monkeypatch, share=False)
    assert shared.steps == full.steps and shared.loss == full.loss
    assert prefix.reused == 0


class _CountingLinear(nn.Linear):
    computed = 0

    def forward(self, x):
        type(self).computed += 1
        return super().forward(x)


class _Toy(nn.Module):
    """Embedding, three layers, a head; each layer's output is changed in place by the model code (as
    a caller of a replayed layer might); `reuse` calls layer 0 twice per forward (ALBERT-like)."""

    def __init__(self, reuse: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Linear(4, 8)
        self.layers = nn.ModuleList([_CountingLinear(8, 8) for _ in range(3)])
        self.head = nn.Linear(8, 1)
        self.reuse = reuse
        self.eval().requires_grad_(False)

    def forward(self, x):
        h = self.emb(x)
        for i in [0, 0, 1, 2] if self.reuse else [0, 1, 2]:
            h = self.layers[i](h).tanh_()
        return float(self.head(h).sum())


def _shared_losses(model, active, calls=3):
    """Losses of `calls` forwards of one step, the active tensor moved between them, each next to a
    full forward of the same weights; and how many layer forwards really computed."""
    x, got, want, start = torch.randn(5, 4), [], [], active.clone()
    _CountingLinear.computed = 0
    with SharedPrefix(model, [active]) as prefix:
        loss = prefix.shared(lambda: model(x))
        for _ in range(calls):
            got.append(loss())
            active.add_(0.1)  # what a perturbation does to the active block
        computed = _CountingLinear.computed
        reused = prefix.reused
    active.copy_(start)
    for _ in range(calls):
        want.append(model(x))
        active.add_(0.1)
    return got, want, computed, reused


def test_replay_skips_the_prefix_layers_and_matches_full_forwards():
    model = _Toy()
    got, want, computed, reused = _shared_losses(model, model.layers[2].weight)
    assert got == want and len(set(got)) == 3
    assert reused == 2 and computed == 3 + 1 + 1  # layers 0-2 once, then only layer 2 per replay


def test_the_head_alone_active_skips_every_layer():
    model = _Toy()
    got, want, computed, reused = _shared_losses(model, model.head.weight)
    assert got == want and computed == 3 and reused == 2


def test_a_reused_layer_module_turns_sharing_off():
    model = _Toy(reuse=True)
    got, want, computed, reused = _shared_losses(model, model.layers[2].weight)
    assert got == want and reused == 0 and computed == 3 * 4


def test_training_mode_is_not_shared():
    model = _Toy().train()
    got, want, computed, reused = _shared_losses(model, model.layers[2].weight)
    assert got == want and reused == 0 and computed == 3 * 3


def test_an_active_first_layer_leaves_nothing_to_share():
    model = _Toy()
    got, want, computed, reused = _shared_losses(model, model.emb.weight)
    assert got == want and reused == 0 and computed == 3 * 3


def test_shared_losses_used_in_turn_keep_their_own_prefix():
    """A probe evaluates two batches at +mu, then both at -mu: each keeps its own layer output."""
    model = _Toy()
    xs = [torch.randn(5, 4), torch.randn(3, 4)]
    active, start = model.layers[2].weight, model.layers[2].weight.clone()
    with SharedPrefix(model, [active]) as prefix:
        losses = [prefix.shared(lambda x=x: model(x)) for x in xs]
        plus = [f() for f in losses]
        active.add_(0.1)
        minus = [f() for f in losses]
        assert prefix.reused == 2
    active.copy_(start)
    assert plus == [model(x) for x in xs]
    active.add_(0.1)
    assert minus == [model(x) for x in xs]


def test_an_instance_level_forward_on_a_layer_is_put_back():
    """Wrappers such as accelerate's offload hooks replace a module's forward on the instance."""
    model = _Toy()
    original = model.layers[0].forward
    model.layers[0].forward = lambda h: original(h)  # an instance-level wrapper, as accelerate sets
    wrapper = model.layers[0].forward
    got, want, _, reused = _shared_losses(model, model.layers[2].weight)
    assert got == want and reused == 2
    assert model.layers[0].__dict__["forward"] is wrapper and "forward" not in model.layers[1].__dict__
