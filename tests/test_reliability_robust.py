"""Hostile or broken reports: validation, clipping and robust per-block aggregation, all recorded in the
log entry so that replay applies exactly what the server applied."""

import math

import pytest

from zorba.federation.robust import RobustAggregator, RobustPolicy, observed_scalars
from zorba.federation.server import ReportRejected, Server
from zorba.planner.plans import AllBlocks
from zorba.wire import codec
from zorba.wire.protocol import Hyper, LogEntry, Report, StepReport, round_seed, step_seed, to_f32

HYPER = Hyper(lr=1e-3, mu=1e-3, q=2, local_steps=2)


def report(server_seed, rnd, client, scalars, loss=0.5):
    rseed = round_seed(server_seed, rnd)
    steps = tuple(StepReport(step_seed(rseed, client, k), tuple(map(to_f32, s))) for k, s in enumerate(scalars))
    return Report(rnd, client, steps, loss)


def honest(c):
    return [(0.5 + 0.01 * c, -0.4), (0.3, 0.45 - 0.01 * c)]


def server_with_round(policy=None, clients=10, blocks=3, attack=None):
    server = Server(AllBlocks(blocks), HYPER, seed=5, robust=policy)
    server.make_plans(list(range(clients)))
    for c in range(clients):
        server.receive(report(5, 0, c, attack if (attack and c == 0) else honest(c)))
    return server, server.close_round()


def test_rejects_nonfinite_scalars_loss_and_metrics():
    server = Server(AllBlocks(2), HYPER, seed=5)
    server.make_plans([0, 1, 2])
    for bad in ([(math.nan, 0.1), (0.1, 0.1)], [(0.1, math.inf), (0.1, 0.1)], [(0.1, -math.inf), (0.1, 0.1)]):
        with pytest.raises(ReportRejected, match="non-finite"):
            server.receive(report(5, 0, 0, bad))
    with pytest.raises(ReportRejected, match="loss"):
        server.receive(report(5, 0, 1, honest(1), loss=math.nan))
    with pytest.raises(ReportRejected, match="metric"):
        server.receive(Report(0, 2, report(5, 0, 2, honest(2)).steps, 0.1, {"x": math.inf}))
    with pytest.raises(ReportRejected, match="round"):
        server.receive(report(5, 1, 2, honest(2)))
    with pytest.raises(ReportRejected, match="steps"):
        server.receive(report(5, 0, 2, honest(2)[:1]))
    server.receive(report(5, 0, 2, honest(2)))
    with pytest.raises(ReportRejected, match="duplicate"):
        server.receive(report(5, 0, 2, honest(2)))
    assert [u.client for u in server.close_round().updates] == [2]


def test_huge_scalars_are_clipped_to_a_multiple_of_the_median_and_logged_clipped():
    server, entry = server_with_round(RobustPolicy(aggregate="mean"), attack=[(1e30, -1e30), (3e38, 0.2)])
    bound = server.aggregator.last_bound
    all_g = sorted(abs(g) for c in range(10) for s in (honest(c) if c else [(1e30, 1e30), (3e38, 0.2)]) for g in s)
    assert bound == to_f32(10 * all_g[19])  # the low median: with half the scalars hostile it stays honest
    attacker = entry.updates[0]
    assert [s.scalars for s in attacker.steps] == [(bound, -bound), (bound, to_f32(0.2))]
    assert all(abs(g) < bound for u in entry.updates[1:] for s in u.steps for g in s.scalars)  # honest untouched
    assert codec.decode_entry(codec.encode_entry(entry)) == entry  # float32-exact: replay sees the same values


def test_clipping_off_keeps_the_attack_and_the_bound_adapts_over_rounds():
    _, entry = server_with_round(RobustPolicy(clip=0, aggregate="mean"), attack=[(1e30, 0.1), (0.1, 0.1)])
    assert entry.updates[0].steps[0].scalars[0] == to_f32(1e30)
    agg = RobustAggregator()
    agg.observe(LogEntry(0, 1e-3, 1, "rademacher", ()))  # empty rounds teach nothing
    assert agg.bound({}) is None
    for scale in (1.0, 2.0, 100.0):
        agg.scales.append(scale)
    assert agg.bound({}) == to_f32(10 * 2.0)


def test_trimmed_drops_the_largest_client_per_block():
    _, entry = server_with_round(RobustPolicy(aggregate="trimmed", trim=0.1), attack=[(50.0, -50.0), (50.0, 50.0)])
    assert 0 not in [u.client for u in entry.updates]  # 10 clients, trim 0.1: one dropped on each block
    assert len(entry.updates) == 9


def test_median_scales_outliers_down_per_block_with_split_updates():
    server = Server(AllBlocks(4), HYPER, seed=5, robust=RobustPolicy(clip=0, aggregate="median"))
    server.planner = type("Plan", (), {"plan": lambda self, t, cs: {0: (0, 1, 2, 3), 1: (0, 1), 2: (0, 1), 3: (2, 3)},
                                       "observe": lambda self, t, r: None})()
    server.make_plans([0, 1, 2, 3])
    server.receive(report(5, 0, 0, [(8.0, 8.0), (8.0, 8.0)]))
    server.receive(report(5, 0, 1, [(1.0, 1.0), (1.0, 1.0)]))
    server.receive(report(5, 0, 2, [(2.0, 2.0), (2.0, 2.0)]))
    server.receive(report(5, 0, 3, [(4.0, 4.0), (4.0, 4.0)]))
    entry = server.close_round()
    parts = {(u.client, u.blocks): u.steps[0].scalars for u in entry.updates}
    # blocks 0,1: clients {0: 8, 1: 1, 2: 2} -> median 2; blocks 2,3: {0: 8, 3: 4} -> low median 4
    assert parts[(0, (0, 1))] == (2.0, 2.0) and parts[(0, (2, 3))] == (4.0, 4.0)
    assert parts[(1, (0, 1))] == (1.0, 1.0) and parts[(3, (2, 3))] == (4.0, 4.0)
    assert set(entry.coefficients()) == {(c, b) for c, bs in [(0, range(4)), (1, (0, 1)), (2, (0, 1)), (3, (2, 3))]
                                         for b in bs}
    assert observed_scalars(entry)[0] == [2.0, 2.0, 2.0, 2.0]
    assert codec.decode_entry(codec.encode_entry(entry)) == entry


def test_screened_drops_a_client_far_above_the_block_median_and_caps_the_rest():
    _, entry = server_with_round(attack=[(-5.0, 4.0), (-4.0, -5.0)])  # ~10x an honest client
    assert 0 not in {u.client for u in entry.updates}
    mags = {u.client: sum(abs(g) for s in u.steps for g in s.scalars) for u in entry.updates}
    assert max(mags.values()) <= sorted(mags.values())[(len(mags) - 1) // 2] * (1 + 1e-6)  # capped at the low median


def test_screened_compares_the_steps_clients_ask_for_not_their_raw_scalars():
    """A client on four times the weights reports twice the |g| (gradient energy grows with the set) and
    steps with half the factor (gamma = 1/2): it is not an outlier, and a 10x client still is."""
    agg = RobustAggregator()
    blocks = {0: (0, 1, 2, 3), 1: (0,), 2: (0,), 3: (0,)}
    reports = {c: report(5, 0, c, [(g, g), (g, -g)]) for c, g in ((0, 2.0), (1, 1.0), (2, 1.1), (3, 0.9))}
    kept = {u.client for u in agg.updates(blocks, reports, {}, {0: 0.5, 1: 1.0, 2: 1.0, 3: 1.0})}
    assert kept == {0, 1, 2, 3}
    loud = agg.updates(blocks, reports, {}, {0: 5.0, 1: 1.0, 2: 1.0, 3: 1.0})
    assert [u.blocks for u in loud if u.client == 0] == [(1, 2, 3)]  # dropped where others compare, alone elsewhere


def test_replay_rebuilds_robust_state_and_rejects_foreign_entries():
    policy = RobustPolicy(aggregate="median")
    first, entry = server_with_round(policy, attack=[(1e6, 1.0), (1.0, 1.0)])
    second = Server(AllBlocks(3), HYPER, seed=5, robust=policy)
    second.make_plans(list(range(10)))
    second.replay(entry)
    assert list(second.aggregator.scales) == list(first.aggregator.scales)
    other = Server(AllBlocks(3), HYPER, seed=6, robust=policy)  # another run's seeds
    other.make_plans(list(range(10)))
    with pytest.raises(ValueError, match="seeds"):
        other.replay(entry)


def test_nothing_is_unpickled_from_the_network():
    """No pickle, marshal, torch.load or numpy allow_pickle anywhere in zorba's own code: messages are
    codec.py bytes (inside Flower ConfigRecords for the Flower engines)."""
    from pathlib import Path

    banned = ("import pickle", "pickle.load", "marshal.loads", "torch.load(", "allow_pickle=True", "dill", "cloudpickle")
    for path in (Path(__file__).parents[1] / "src" / "zorba").rglob("*.py"):
        text = path.read_text()
        for word in banned:
            assert word not in text, f"{path}: {word}"
