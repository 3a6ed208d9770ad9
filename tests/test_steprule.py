"""The step rule: per-client lr factors and the coverage factor, carried by plans and log entries so
that replay stays bit-exact; old log entries still decode."""

import struct

import pytest

from zorba.core.replica import replay_ops
from zorba.federation.robust import RobustPolicy
from zorba.federation.server import Server
from zorba.planner.plans import AllBlocks, FeasibleRoundRobin
from zorba.planner.steprule import StepRule
from zorba.wire import codec
from zorba.wire.logio import entry_from_dict, entry_to_dict
from zorba.wire.protocol import ClientUpdate, Hyper, LogEntry, Report, StepReport, step_seed


def test_scale_is_one_for_all_blocks_and_grows_as_the_set_shrinks():
    rule = StepRule((10.0, 30.0, 60.0), 0.5)
    assert rule.scale((0, 1, 2)) == 1.0
    assert rule.scale((2,)) == pytest.approx((100 / 60) ** 0.5)
    assert rule.scale((0,)) == pytest.approx(10 ** 0.5)
    assert StepRule((10.0, 30.0, 60.0), 0.0).scale((0,)) == 1.0
    assert StepRule((10.0, 30.0, 60.0), 1.0).scale((0, 1)) == pytest.approx(2.5)


def _entry() -> LogEntry:
    ups = (ClientUpdate(0, (0, 1), (StepReport(11, (0.5,)),), 3.0, 2.0),
           ClientUpdate(1, (1,), (StepReport(12, (-0.25,)),), 1.0, 4.0))
    return LogEntry(3, 1e-3, 1, "rademacher", ups)


def test_coefficients_are_the_weighted_mean_of_the_clients_covering_a_block():
    assert _entry().coefficients() == {(0, 0): 1.0, (0, 1): 0.75, (1, 1): 0.25}


def test_replay_scales_each_client_by_its_factor():
    ops = replay_ops(_entry())
    assert ops[0] == [(11, 0, -1e-3 * 2.0 * 1.0 * 0.5)]
    assert ops[1] == [(11, 0, -1e-3 * 2.0 * 0.75 * 0.5), (12, 0, -1e-3 * 4.0 * 0.25 * -0.25)]


def test_entries_round_trip_through_codec_and_json_and_v1_entries_decode():
    e = _entry()
    assert codec.decode_entry(codec.encode_entry(e)) == e
    assert entry_from_dict(entry_to_dict(e)) == e
    v1 = b"ZL1" + struct.pack("<IdHBI", 3, 1e-3, 1, 0, 1) + struct.pack("<Id", 0, 1.0) \
        + struct.pack("<HH", 1, 0) + struct.pack("<IQf", 1, 11, 0.5)
    old = codec.decode_entry(v1)
    assert old.updates[0].lr_scale == 1.0
    summed = bytearray(codec.encode_entry(e))  # the coverage-exponent slot: only 0 (the mean) decodes
    slot = 3 + struct.calcsize("<IdHB")
    summed[slot : slot + 8] = struct.pack("<d", 1.0)
    with pytest.raises(codec.DecodeError, match="coverage exponent"):
        codec.decode_entry(bytes(summed))
    with pytest.raises(codec.DecodeError):
        bad = LogEntry(3, 1e-3, 1, "rademacher", (ClientUpdate(0, (0,), (StepReport(1, (0.5,)),), 1.0, float("nan")),))
        codec.decode_entry(codec.encode_entry(bad))


def _server(rule: StepRule) -> Server:
    # the plain mean: these tests follow the step factors, not what robust aggregation does to scalars
    return Server(FeasibleRoundRobin([1, 1, 3], [1, 1, 1]), Hyper(1e-3, 1e-3, 1, 1), seed=5, step_rule=rule,
                  robust=RobustPolicy(aggregate="mean"))


def _answer(server: Server, plans) -> LogEntry:
    for c, p in plans.items():
        server.receive(Report(p.round, c, (StepReport(step_seed(p.round_seed, c, 0), (0.1,)),), 0.5))
    return server.close_round()


def test_server_plans_carry_the_scaled_lr_and_the_entry_the_factor():
    rule = StepRule((10.0, 30.0, 60.0), 0.5)
    server = _server(rule)
    plans = server.make_plans([0, 1, 2])
    for p in plans.values():
        assert p.hyper.lr == 1e-3 * rule.scale(p.blocks)
    entry = _answer(server, plans)
    assert {u.client: u.lr_scale for u in entry.updates} == {c: rule.scale(p.blocks) for c, p in plans.items()}
    again = _server(rule)  # resume: a replayed entry must carry the factors the plans give
    again.make_plans([0, 1, 2])
    again.replay(entry)
    forged = LogEntry(1, entry.lr, 1, entry.dist, tuple(
        ClientUpdate(c, p.blocks, (StepReport(step_seed(p.round_seed, c, 0), (0.1,)),), 1.0, 9.0)
        for c, p in again.make_plans([0, 1, 2]).items()))
    with pytest.raises(ValueError, match="step factor"):
        again.replay(forged)


def test_all_blocks_without_a_rule_is_unchanged():
    server = Server(AllBlocks(3), Hyper(1e-3, 1e-3, 1, 1), seed=5)
    plans = server.make_plans([0, 1])
    assert all(p.hyper.lr == 1e-3 for p in plans.values())
    entry = _answer(server, plans)
    assert all(u.lr_scale == 1.0 for u in entry.updates)
