"""Accuracy under 30% dropouts and under hostile clients, against the clean run on the same seeds.

Setup with a clear training signal that a tiny random model learns in seconds: SST-2-format sentences
whose label is carried by class words (synthetic, seeded), tiny BERT, 10 clients. The attack matrix
(1 and 3 of 10 clients, scaled-negative and huge scalars) runs on a non-saturating variant. About a
minute in all."""

import math
import random

import pytest
import torch

import zorba.federation.runner as runner_mod
from zorba.federation.config import make_config
from zorba.federation.reliability import Reliability
from zorba.federation.runner import Runner, check_inputs
from zorba.memory.profiles import ClientProfile
from zorba.wire.protocol import Report, StepReport

torch.set_num_threads(1)

ROUNDS = 15
# Blocks are averaged with clients weighted by their examples: fewer effective clients than 10 equal
# ones, so more step noise; at 1e-2 seed 1's dropout run sat at the edge of stability (78% against 100%).
LR = 5e-3
POS, NEG = ["sunny", "happy"], ["rainy", "angry"]
NEUTRAL = "the a table house river paper chair window street door car book".split()


def synthetic_tsv(n: int, seed: int) -> str:
    rng, rows = random.Random(seed), ["label\tsentence"]
    for _ in range(n):
        y = rng.randint(0, 1)
        words = rng.sample(POS if y else NEG, 2) + rng.sample(NEUTRAL, 3)
        rng.shuffle(words)
        rows.append(f"{y}\t{' '.join(words)}")
    return "\n".join(rows) + "\n"


def synthetic_data_dir(tmp_path_factory, name: str, dev_size: int) -> str:
    root = tmp_path_factory.mktemp(name)
    (root / "sst2").mkdir()
    (root / "sst2" / "train.tsv").write_text(synthetic_tsv(400, 1))
    (root / "sst2" / "dev.tsv").write_text(synthetic_tsv(dev_size, 2))
    return str(root)


@pytest.fixture(scope="module")
def cfg(tiny_models, tmp_path_factory):
    root = synthetic_data_dir(tmp_path_factory, "synthetic", 200)
    return make_config(model=str(tiny_models["bert"]), clients=10, rounds=ROUNDS, local_steps=2, planner="all",
                       data_dir=root, lr=LR, mu=1e-3, batch_size=16, max_len=16, measure_memory=False,
                       eval_every=ROUNDS, seed=1, alpha=1.0)



def train(cfg, reliability=None, setup=None):
    runner = Runner(cfg, check_inputs(cfg), reliability=reliability)
    if setup:
        setup(runner)
    state = runner.run()
    return state


@pytest.fixture(scope="module")
def clean(cfg):
    state = train(cfg)
    assert state.accuracy["final"] >= state.accuracy["initial"] + 0.2, state.accuracy  # a clear signal to lose
    return state


def test_dropouts(cfg, clean):
    state = train(cfg, Reliability(dropout=0.3))
    planned = [h["clients"] for h in state.history]
    assert len(state.history) == ROUNDS and min(planned) < cfg.clients and sum(planned) < 0.8 * ROUNDS * cfg.clients
    assert state.device.digest() == state.server.replica.digest()
    print(f"dropouts: clean {clean.accuracy} dropout 0.3 {state.accuracy}")
    assert abs(state.accuracy["final"] - clean.accuracy["final"]) <= 0.01 + 1e-9


def hostile_clients(bad=(0,)):
    """Client 0 of 10 (10%) sends NaN, inf or 1e30 scalars, changing kind every round."""
    return attacked(lambda rnd, g: (math.nan, math.inf, 1e30)[rnd % 3], bad)


def attacked(corrupt, bad):
    """The clients in `bad` report corrupt(round, honest scalar) instead of each honest scalar."""
    honest = runner_mod.run_round

    def run_round(plan, state, replica, scorer, data, *rest):
        report = honest(plan, state, replica, scorer, data, *rest)
        if state.cid not in bad:
            return report
        steps = tuple(StepReport(s.seed, tuple(corrupt(plan.round, g) for g in s.scalars)) for s in report.steps)
        return Report(report.round, report.client, steps, report.loss)

    return run_round


def test_non_finite_reports_are_rejected_and_huge_ones_clipped(cfg, clean, monkeypatch):
    monkeypatch.setattr(runner_mod, "run_round", hostile_clients())
    defended = train(cfg)
    assert all(h["answered"] == cfg.clients - 1 for h in defended.history if h["round"] % 3 != 2)  # NaN/inf rejected
    print(f"hostile: clean {clean.accuracy} defended {defended.accuracy}")
    assert abs(defended.accuracy["final"] - clean.accuracy["final"]) <= 0.01 + 1e-9
    short = cfg.model_copy(update={"rounds": 3})
    undefended = train(short, Reliability(clip=0, aggregate="mean"))  # no defence at all: 1e30 lands in round 2
    weights = torch.cat([p.detach().flatten() for p in undefended.lm.model.parameters()])
    assert not torch.isfinite(weights).all() or weights.abs().max() > 1e20


# The attacks the default aggregation (`screened`) must absorb, on a task that does not saturate: 8
# rounds at a smaller lr leave the clean run short of 100%, a near-iid partition (alpha 100) means
# that leaving the attackers out loses no information, and 1000 dev examples resolve 1 point.
# Accuracy is the mean over three seeds: one ZO trajectory moves by several points from seed to seed.
ATTACKS = {"scaled-negative": lambda rnd, g: -10.0 * g, "huge": lambda rnd, g: 1e30}
ATTACK_SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def attack_cfg(cfg, tmp_path_factory):
    root = synthetic_data_dir(tmp_path_factory, "synthetic-large-dev", 1000)
    return cfg.model_copy(update={"data_dir": root, "rounds": 8, "eval_every": 8, "lr": 3e-3, "alpha": 100.0})


def mean_final(cfg, reliability=None) -> float:
    return sum(train(cfg.model_copy(update={"seed": s}), reliability).accuracy["final"] for s in ATTACK_SEEDS) / 3


@pytest.fixture(scope="module")
def attack_clean(attack_cfg):
    acc = mean_final(attack_cfg)
    assert 0.7 <= acc <= 0.99, acc  # learning, and not saturated
    return acc


@pytest.mark.parametrize("bad", [(0,), (0, 1, 2)], ids=["1-of-10", "3-of-10"])
@pytest.mark.parametrize("attack", ATTACKS)
def test_default_aggregation_absorbs_hostile_clients(attack_cfg, attack_clean, attack, bad, monkeypatch):
    monkeypatch.setattr(runner_mod, "run_round", attacked(ATTACKS[attack], bad))
    defended = mean_final(attack_cfg)
    print(f"{attack} x {len(bad)}: clean {attack_clean:.4f} defended {defended:.4f}")
    assert abs(defended - attack_clean) <= 0.01 + 1e-9


def test_the_plain_mean_falls_to_one_scaled_negative_client(attack_cfg, attack_clean, monkeypatch):
    monkeypatch.setattr(runner_mod, "run_round", attacked(ATTACKS["scaled-negative"], (0,)))
    undefended = train(attack_cfg, Reliability(aggregate="mean")).accuracy["final"]
    assert undefended < attack_clean - 0.1, (undefended, attack_clean)


def test_deadline_leaves_out_stragglers(cfg):
    short = cfg.model_copy(update={"rounds": 3})

    def slow_client_0(runner):
        p = runner.profiles[0]
        runner.profiles[0] = ClientProfile(p.name, p.memory_bytes, speed=1e-12)

    state = train(short, Reliability(deadline=3600.0), setup=slow_client_0)
    assert all(h["answered"] == cfg.clients - 1 for h in state.history)
    assert all(0 not in {u.client for u in e.updates} for e in state.server.log)
    assert state.device.digest() == state.server.replica.digest()
