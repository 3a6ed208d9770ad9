import math

import pytest
import torch

from zorba.core.models import load_model
from zorba.core.replica import Replica
from zorba.federation.config import make_config
from zorba.federation.runner import Runner, check_inputs
from zorba.federation.server import ReportRejected
from zorba.wire import codec
from zorba.wire.protocol import ClientUpdate, Hyper, LogEntry, Report, RoundPlan, StepReport, step_seed


@pytest.fixture(scope="module")
def small_run(tiny_models, data_dir):
    cfg = make_config(model=str(tiny_models["bert"]), clients=2, rounds=3, local_steps=2, train_size=200,
                      planner="feasible-round-robin", block_fractions=(0.3,), data_dir=str(data_dir), lr=1e-3,
                      measure_memory=False, max_len=32)
    runner = Runner(cfg, check_inputs(cfg))
    base = {n: p.detach().clone() for n, p in runner.state.lm.model.named_parameters()}
    return runner, base


def _params(lm):
    return {n: p.detach().clone() for n, p in lm.model.named_parameters()}


def test_inactive_blocks_bit_identical_active_blocks_move(small_run):
    runner, _ = small_run
    s = runner.state
    before = _params(s.lm)
    rec = runner.run_round()
    active = {b for blocks in rec["blocks"].values() for b in blocks}
    after = _params(s.lm)
    assert active and len(active) < len(s.lm.blocks)
    for i, block in enumerate(s.lm.blocks):
        same = all(torch.equal(before[n], after[n]) for n in block.param_names)
        assert same == (i not in active), f"block {block.name}: active={i in active}"


def test_replay_reproduces_server_and_clients_hold_server_weights(small_run, tiny_models):
    runner, base = small_run
    s = runner.run()
    fresh = Replica(load_model(str(tiny_models["bert"])))
    for entry in s.server.log:
        fresh.apply(entry)
    assert fresh.digest() == s.server.replica.digest()
    assert s.device.digest() == s.server.replica.digest()
    assert s.device.cursor == len(s.server.log)
    assert any(not torch.equal(base[n], p) for n, p in s.lm.model.named_parameters())


def test_per_block_aggregation_averages_over_covering_clients_only():
    entry = LogEntry(0, 0.1, 1, "rademacher", (
        ClientUpdate(0, (0, 1), (StepReport(1, (1.0,)),)),
        ClientUpdate(1, (1,), (StepReport(2, (1.0,)),)),
        ClientUpdate(2, (1, 2), (StepReport(3, (1.0,)),), weight=2.0),
    ))
    coef = entry.coefficients()
    assert coef[(0, 0)] == 1.0 and coef[(2, 2)] == 1.0
    assert coef[(0, 1)] == pytest.approx(0.25) and coef[(2, 1)] == pytest.approx(0.5)


def _plan():
    entry = LogEntry(0, 2e-5, 2, "rademacher", (ClientUpdate(3, (0, 2), (StepReport(2**63 + 5, (0.5, -1.25)),), 1.5),))
    return RoundPlan(1, 3, (1, 4), 123, Hyper(2e-5, 1e-3, 2, 1, 16), (entry,))


def test_codec_round_trips():
    plan = _plan()
    assert codec.decode_plan(codec.encode_plan(plan)) == plan
    asked = RoundPlan(1, 3, (1, 4), 123, Hyper(2e-5, 1e-3, 2, 1, 16))
    rep = Report(1, 3, (StepReport(step_seed(123, 3, 0), (0.25, 1.5)),), 0.5, {"peak": 3.0})
    assert codec.decode_report(codec.encode_report(rep), {3: asked}) == rep
    assert codec.decode_entry(codec.encode_entry(plan.catch_up[0])) == plan.catch_up[0]


def test_a_report_is_its_scalars_and_16_bytes():
    """The step seeds are the server's to derive: K steps of one scalar cost 4 K + 16 bytes."""
    steps = tuple(StepReport(step_seed(9, 0, k), (0.5,)) for k in range(5))
    wire = codec.encode_report(Report(0, 0, steps, 0.1))
    assert len(wire) == 4 * 5 + 16
    assert codec.decode_report(wire, {0: RoundPlan(0, 0, (0,), 9, Hyper(1e-3, 1e-3, 1, 5))}).steps == steps


@pytest.mark.parametrize("cut", [0, 3, 10, 20, -1])
def test_codec_rejects_truncated(cut):
    data = codec.encode_plan(_plan())
    with pytest.raises(codec.DecodeError):
        codec.decode_plan(data[:cut])


def test_server_rejects_unassigned_seed_and_nonfinite(small_run):
    runner, _ = small_run
    server = runner.state.server
    plans = server.make_plans([0, 1])
    p = plans[0]
    bad_seed = Report(p.round, 0, tuple(StepReport(k + 1, (0.1,)) for k in range(p.hyper.local_steps)), 0.0)
    with pytest.raises(ReportRejected, match="not assigned"):
        server.receive(bad_seed)

    nan = Report(p.round, 0, tuple(StepReport(step_seed(p.round_seed, 0, k), (math.nan,)) for k in range(p.hyper.local_steps)), 0.0)
    with pytest.raises(ReportRejected, match="non-finite"):
        server.receive(nan)
    with pytest.raises(ReportRejected, match="no plan"):
        server.receive(Report(p.round, 7, (), 0.0))
    server.close_round()  # an empty round still makes an entry: log index == round index
    assert server.log[-1].updates == ()
