"""Deferred embedding perturbation (deferred.py): the same forwards, scalars and weights as eager
passes, bit for bit; only untied tables qualify."""

import pytest
import torch

from zorba.core import deferred as deferred_mod
from zorba.core import rng
from zorba.core.deferred import DeferredTables
from zorba.core.models import load_model, state_digest
from zorba.core.replica import Replica
from zorba.core.zo import spsa_step


@pytest.fixture(autouse=True)
def _defer_tiny_tables(monkeypatch):
    """The tiny models' tables are below the size the compiled loop perturbs eagerly: defer them anyway."""
    monkeypatch.setattr(deferred_mod, "_MIN_ELEMENTS_NATIVE", 0)


def test_small_tables_stay_eager_with_the_compiled_loop(tiny_models, monkeypatch):
    lm = load_model(str(tiny_models["bert"]))
    params = list(lm.model.parameters())
    def deferred_tables() -> int:
        with DeferredTables(lm.model, params) as d:
            return len(d.tables)

    monkeypatch.setattr(deferred_mod, "_MIN_ELEMENTS_NATIVE", 1 << 22)
    with deferred_mod.rng_native.off():
        assert deferred_tables() == 1  # the torch path defers the word embeddings
    assert deferred_tables() == (0 if deferred_mod.rng_native.usable() else 1)


def test_rows_of_the_stream_match_the_whole_stream():
    for vocab, width in ((100, 32), (50, 384), (37, 20), (64, 33)):
        full = rng.noise(vocab * width, 77).view(vocab, width)
        rows = torch.tensor([0, 5, vocab - 1, 3, 5])
        both = rng.rademacher_rows([77, 78], rows, width)
        assert torch.equal(both[0], full[rows])
        assert torch.equal(both[1], rng.noise(vocab * width, 78).view(vocab, width)[rows])


def _train(path, defer: bool, ids: torch.Tensor, steps=3, q=2, discard=False):
    lm = load_model(str(path))
    rep = Replica(lm)
    blocks = list(range(rep.num_blocks))
    loss = lambda: float(lm.model(input_ids=ids).last_hidden_state.square().mean())  # noqa: E731
    active = [t for b in blocks for t in rep.tensors[b]]
    reports = []
    with DeferredTables(lm.model, active if defer else []) as d:
        for s in range(steps):
            reports.append(spsa_step(loss, rep.tensors, blocks, s, 1e-3, 5e-2, q=q, deferred=d))
        owned = len(d.tables)
        if discard:
            d.discard()
    return reports, state_digest(lm.model), owned, lm


def test_deferred_steps_match_eager_steps_bit_for_bit(tiny_models):
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(0))
    eager, eager_digest, _, _ = _train(tiny_models["bert"], False, ids)
    lazy, lazy_digest, owned, _ = _train(tiny_models["bert"], True, ids)
    assert owned == 1  # the word-embedding table; position and token-type tables are too small
    assert [r[0] for r in lazy] == [r[0] for r in eager]  # same scalars: same forwards
    assert [r[1] for r in lazy] == [r[1] for r in eager]
    assert lazy_digest == eager_digest  # leaving the context applied the queue exactly


def test_a_long_queue_is_flushed_to_the_table_and_stays_exact(tiny_models, monkeypatch):
    flushes = []
    original = deferred_mod._Table.flush

    def counting(self):
        flushes.append(len(self.pending))
        original(self)

    monkeypatch.setattr(deferred_mod._Table, "flush", counting)
    ids = torch.arange(0, 4000).view(16, 250)  # 4000 distinct rows: a table pass beats the queue soon
    eager, eager_digest, _, _ = _train(tiny_models["bert"], False, ids, steps=4, q=1)
    lazy, lazy_digest, _, _ = _train(tiny_models["bert"], True, ids, steps=4, q=1)
    assert any(n > 0 for n in flushes[:-1])  # flushed mid-round, not only on leaving the context
    assert [r[0] for r in lazy] == [r[0] for r in eager]
    assert lazy_digest == eager_digest


def test_discard_leaves_the_table_at_its_last_flushed_state(tiny_models):
    ids = torch.randint(0, 200, (2, 12), generator=torch.Generator().manual_seed(1))
    _, _, _, lm = _train(tiny_models["bert"], True, ids, discard=True)
    fresh = load_model(str(tiny_models["bert"]))
    table = lambda m: m.get_input_embeddings().weight  # noqa: E731
    assert torch.equal(table(lm.model), table(fresh.model))  # queued adds never reached the table
    assert not torch.equal(lm.model.encoder.layer[0].attention.self.query.weight,
                           fresh.model.encoder.layer[0].attention.self.query.weight)


def test_tied_tables_are_not_deferred(tiny_models):
    lm = load_model(str(tiny_models["opt"]))
    emb = lm.model.get_input_embeddings().weight
    tied = lm.model.get_output_embeddings().weight is emb
    with DeferredTables(lm.model, [p for p in lm.model.parameters()]) as d:
        assert d.owns(emb) is (not tied)
        assert tied  # the tiny OPT ties its head to the table, as OPT does
