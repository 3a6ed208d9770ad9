"""Mixed precision clients: bf16 (or int8) frozen blocks, fp32 active blocks, exact fp32 state offloaded."""

import copy

import pytest
import torch

from zorba.core.replica import Replica
from zorba.core.scoring import Scorer
from zorba.core.tasks import get_task
from zorba.core.zo import spsa_step
from zorba.federation.memprobe import load_probe_model
from zorba.memory.precision import PRECISIONS, MasterStore, TieredReplica, make_client_replica
from zorba.memory.quant import INT8_MAX, SCALE_ATTR, dequantize_rows, int8_eligible, quantize_rows
from zorba.wire.protocol import ClientUpdate, LogEntry, StepReport

FAMILIES = ("bert", "opt", "llama", "gpt2")


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request):
    return load_probe_model(f"random:{request.param}-tiny")


def _entries(n_blocks: int, rounds: int = 3) -> list[LogEntry]:
    out = []
    for r in range(rounds):
        updates = (
            ClientUpdate(0, (0, n_blocks - 1), (StepReport(10 * r + 1, (0.7, -0.2)), StepReport(10 * r + 2, (1.5, 0.1)))),
            ClientUpdate(1, tuple(range(1, n_blocks)), (StepReport(10 * r + 3, (-2.0, 0.4)),), weight=2.0),
        )
        out.append(LogEntry(r, 1e-2, 2, "rademacher", updates))
    return out


def _batch(lm, n=4):
    scorer = Scorer(lm, get_task("sst2"), 32)
    ids = scorer.encode([type("E", (), {"text_a": f"a fine film number {i} .", "text_b": None})() for i in range(n)])
    return scorer, ids, [i % 2 for i in range(n)]


@pytest.mark.parametrize(("precision", "store"), [("bf16", "file"), ("fp16", "memory"), ("fp32", "memory")])
def test_tiered_replay_is_bit_exact_and_working_copy_follows(tiny, store, precision):
    plain, tiered_lm = copy.deepcopy(tiny), copy.deepcopy(tiny)
    ref, rep = Replica(plain), make_client_replica(tiered_lm, precision, store)
    entries = _entries(ref.num_blocks)
    ref.sync(entries)
    assert rep.sync(entries) == len(entries) and rep.cursor == len(entries)
    assert rep.digest() == ref.digest()  # exact fp32 state, though the working copy is low precision
    want = PRECISIONS[precision]
    for ref_block, block in zip(ref.tensors, rep.tensors, strict=True):
        for r, t in zip(ref_block, block, strict=True):
            assert t.dtype == want
            assert torch.equal(t, r.to(want))  # re-derived from the replayed fp32 state


def test_round_promotes_active_blocks_and_restores_exactly(tiny):
    rep = make_client_replica(copy.deepcopy(tiny), "bf16", "file")
    before = rep.digest()
    scorer, ids, labels = _batch(rep.lm)
    active = [1]
    snap = rep.snapshot(active)
    dtypes = [{t.dtype for t in block} for block in rep.tensors]
    assert dtypes[1] == {torch.float32} and all(d == {torch.bfloat16} for b, d in enumerate(dtypes) if b != 1)
    frozen_before = [t.clone() for t in rep.tensors[0]]
    for k in range(3):
        _, loss = spsa_step(lambda: scorer.loss(ids, labels), rep.tensors, active, sseed=k, mu=1e-3, lr=1e-2)
        assert torch.isfinite(torch.tensor(loss))
    assert all(torch.equal(a, b) for a, b in zip(frozen_before, rep.tensors[0], strict=True))
    rep.restore(snap)
    assert rep.digest() == before
    assert all(t.dtype == torch.bfloat16 for block in rep.tensors for t in block)


def test_mixed_forward_keeps_fp32_activations_and_matches_rounded_weights(tiny):
    """A mixed model computes exactly what an fp32 model with bf16-rounded frozen weights computes."""
    rep = make_client_replica(copy.deepcopy(tiny), "bf16", "memory")
    rounded = copy.deepcopy(tiny)
    active = [rep.num_blocks - 2]
    with torch.no_grad():
        for b, block in enumerate(Replica(rounded).tensors):
            if b not in active:
                for t in block:
                    t.copy_(t.to(torch.bfloat16).float())
    rep.snapshot(active)
    scorer, ids, labels = _batch(rep.lm)
    ref_scorer, _, _ = _batch(rounded)
    assert torch.allclose(scorer.logits(ids), ref_scorer.logits(ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_perturbation_signal_survives_frozen_blocks(tiny, precision):
    """The +mu / -mu loss difference on the first layer (upstream of frozen ones) is close to fp32's."""
    rep = make_client_replica(copy.deepcopy(tiny), precision, "memory")
    ref = Replica(copy.deepcopy(tiny))
    scorer, ids, labels = _batch(rep.lm, 8)
    ref_scorer, _, _ = _batch(ref.lm, 8)
    rep.snapshot([1])
    g_mixed, _ = spsa_step(lambda: scorer.loss(ids, labels), rep.tensors, [1], sseed=3, mu=1e-3, lr=0.0)
    g_ref, _ = spsa_step(lambda: ref_scorer.loss(ids, labels), ref.tensors, [1], sseed=3, mu=1e-3, lr=0.0)
    a, b = g_mixed.scalars[0], g_ref.scalars[0]
    assert abs(a - b) <= 0.05 * abs(b) + 1e-3, (a, b)


def test_master_store_file_round_trip_is_not_resident():
    t = torch.randn(3_000_001)
    store = MasterStore.of([[t]], "file")
    back = torch.cat([store.read(0, 0, s, n) for s, n in store.chunks(0, 0)])
    assert torch.equal(back, t)
    assert store.nbytes() == 4 * t.numel()


def test_unknown_precision_is_a_user_error(tiny):
    from zorba.errors import UserError

    with pytest.raises(UserError, match="unknown precision"):
        TieredReplica(copy.deepcopy(tiny), "int3")


def _int8_replica(tiny, store="memory"):
    return make_client_replica(copy.deepcopy(tiny), "int8", store)


def _assert_int8_working_copy(rep, ref):
    """Eligible weights: per-row int8 within half a step of the exact state; the rest: bf16-rounded."""
    eligible = int8_eligible(rep.lm.model)
    for ref_block, block in zip(ref.tensors, rep.tensors, strict=True):
        for r, t in zip(ref_block, block, strict=True):
            if id(t) in eligible:
                assert t.dtype == torch.int8
                scale = getattr(t, SCALE_ATTR)
                err = (dequantize_rows(t, scale) - r).abs()
                assert torch.all(err <= scale.unsqueeze(1) * (0.5 + 1e-5))
            else:
                assert t.dtype == torch.bfloat16 and torch.equal(t, r.to(torch.bfloat16))


def test_int8_replay_is_bit_exact_and_working_copy_is_requantised(tiny):
    ref, rep = Replica(copy.deepcopy(tiny)), _int8_replica(tiny, "file")
    assert any(t.dtype == torch.int8 for block in rep.tensors for t in block)
    entries = _entries(ref.num_blocks)
    ref.sync(entries)
    rep.sync(entries)
    assert rep.digest() == ref.digest()
    _assert_int8_working_copy(rep, ref)


def test_int8_round_promotes_to_exact_fp32_and_requantises_identically(tiny):
    ref, rep = Replica(copy.deepcopy(tiny)), _int8_replica(tiny)
    before = [t.clone() for block in rep.tensors for t in block]
    snap = rep.snapshot([1])
    for r, t in zip(ref.tensors[1], rep.tensors[1], strict=True):
        assert t.dtype == torch.float32 and torch.equal(t, r) and not hasattr(t, SCALE_ATTR)
    rep.restore(snap)
    after = [t for block in rep.tensors for t in block]
    assert all(a.dtype == b.dtype and torch.equal(a, b) for a, b in zip(before, after, strict=True))
    _assert_int8_working_copy(rep, ref)


def test_int8_forward_computes_the_dequantised_fp32_model(tiny):
    """Mixed int8 / bf16 / fp32 forward == an fp32 model holding the dequantised (and rounded) weights:
    the Linear row blocks, embedding rows and tied heads all apply their scales."""
    rep = _int8_replica(tiny)
    active = [rep.num_blocks - 2]
    rep.snapshot(active)
    plain = copy.deepcopy(tiny)
    with torch.no_grad():
        for block, ref_block in zip(rep.tensors, Replica(plain).tensors, strict=True):
            for t, r in zip(block, ref_block, strict=True):
                r.copy_(dequantize_rows(t, getattr(t, SCALE_ATTR)) if t.dtype == torch.int8 else t.float())
    scorer, ids, _ = _batch(rep.lm)
    ref_scorer, _, _ = _batch(plain)
    assert torch.allclose(scorer.logits(ids), ref_scorer.logits(ids), rtol=1e-4, atol=1e-5)


def test_quantize_rows_bounds_zero_rows_and_symmetry():
    w = torch.randn(5, 300) * torch.tensor([1e-4, 1.0, 30.0, 0.0, 2.0]).unsqueeze(1)
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8 and scale.shape == (5,)
    assert torch.all((dequantize_rows(q, scale) - w).abs() <= scale.unsqueeze(1) * (0.5 + 1e-5))
    assert torch.all(q[3] == 0) and scale[3] == 1.0  # an all-zero row stays zero, no division by zero
    assert int(q.abs().max()) == INT8_MAX and int(q.min()) >= -INT8_MAX
    neg_q, neg_scale = quantize_rows(-w)
    assert torch.equal(neg_q, -q) and torch.equal(neg_scale, scale)


def test_int8_keeps_parameters_of_other_modules_in_bf16():
    """GPT-2's Conv1D and OPT's learned positions are not nn.Linear / nn.Embedding: no int8 for them."""
    gpt2, opt = load_probe_model("random:gpt2-tiny").model, load_probe_model("random:opt-tiny").model
    ok = int8_eligible(gpt2) | int8_eligible(opt)
    conv = [m.weight for m in gpt2.modules() if type(m).__name__ == "Conv1D"]
    positions = [m.weight for m in opt.modules() if type(m).__name__ == "OPTLearnedPositionalEmbedding"]
    assert conv and positions and not any(id(p) in ok for p in conv + positions)
    assert id(opt.get_input_embeddings().weight) in ok and id(opt.get_output_embeddings().weight) in ok
