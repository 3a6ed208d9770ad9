"""The ZorbaPlanner behind the runner's BlockPlanner interface."""

from types import SimpleNamespace

import numpy as np
import pytest

from zorba.planner import BoundConstants, MemoryModel, PlanInfeasible, ZorbaPlanner, make_zorba_planner
from zorba.plans import BlockPlanner

SIZES = np.array([40.0, 10.0, 10.0, 10.0, 10.0, 5.0])


def budgets_for_counts(mem, counts):
    """Room for each client's `count` costliest blocks."""
    costliest = np.concatenate([[0.0], np.cumsum(np.sort(mem.delta)[::-1])])
    return mem.fixed(len(counts)) + costliest[np.asarray(counts)]


def planner(counts, **kw):
    mem = MemoryModel.from_block_sizes(SIZES)
    consts = BoundConstants.from_block_sizes(SIZES, lr=0.005, local_steps=2)
    return ZorbaPlanner(SIZES, budgets_for_counts(mem, counts), mem, consts, **kw), mem


def memory_of(mem, plan, ids, budgets):
    for cid in ids:
        A = np.zeros((1, mem.n_blocks), bool)
        A[0, list(plan[cid])] = True
        assert mem.client_memory(A)[0] <= budgets[cid] * (1 + 1e-12)


def test_plans_every_present_client_within_its_budget_and_covers_every_block():
    p, mem = planner([6, 4, 3, 2, 6, 4, 3, 2])
    assert isinstance(p, BlockPlanner)
    present = [0, 2, 3, 5, 7]  # 1, 4, 6 dropped out
    plan = p.plan(0, present)
    assert sorted(plan) == present
    for blocks in plan.values():
        assert len(blocks) >= 1 and list(blocks) == sorted(blocks)
    assert set().union(*plan.values()) == set(range(len(SIZES)))
    memory_of(mem, plan, present, p.budgets)


def test_observed_scalars_re_estimate_the_constants_and_re_plan():
    p, _ = planner([6, 3, 3, 2])
    rng = np.random.default_rng(0)
    for r in range(3):
        plan = p.plan(r, [0, 1, 2, 3])
        p.observe(r, {c: rng.normal(0.0, 1.0 + len(b), 20).tolist() for c, b in plan.items()})
    assert not np.allclose(p.consts.G2, p.prior.G2)
    assert p.plan(3, [0, 1, 2, 3])  # re-planned from the new constants


def test_unknown_rounds_are_ignored_by_observe():
    p, _ = planner([6, 3])
    p.observe(5, {0: [1.0]})
    assert p.consts is p.prior


def test_budgets_too_small_for_one_block_fail_with_the_client_named():
    mem = MemoryModel.from_block_sizes(SIZES)
    budgets = budgets_for_counts(mem, [6, 1])
    budgets[1] = mem.fixed(2)[1] + 0.5 * mem.delta.min()
    with pytest.raises(PlanInfeasible, match="client 1"):
        ZorbaPlanner(SIZES, budgets, mem)


def test_a_window_rotates_when_one_round_cannot_cover_every_block():
    sizes = np.full(5, 4.0)
    mem = MemoryModel.from_block_sizes(sizes)
    budgets = mem.fixed(2) + 2 * mem.delta[0]
    p = ZorbaPlanner(sizes, budgets, mem, BoundConstants.from_block_sizes(sizes, lr=0.01))
    seen = set()
    for r in range(12):
        plan = p.plan(r, [0, 1])
        seen |= set().union(*plan.values())
    assert p.schedule.window == 2
    assert seen == set(range(5))


def test_interchangeable_clients_rotate_their_rows():
    p, _ = planner([6, 6, 6, 6, 2, 2, 2, 2])
    plans = [p.plan(r, list(range(8))) for r in range(6)]
    assert len({tuple(sorted(pl.items())) for pl in plans}) > 1
    for pl in plans:  # the multiset of block sets within a class never changes
        assert sorted(pl[c] for c in range(4)) == sorted(plans[0][c] for c in range(4))


def test_faster_clients_take_the_heavier_of_interchangeable_rows():
    p, _ = planner([3, 3, 3, 3], speed=[1.0, 4.0, 2.0, 3.0])
    for r in range(4):
        plan = p.plan(r, [0, 1, 2, 3])
        active = {c: SIZES[list(b)].sum() for c, b in plan.items()}
        by_speed = [active[c] for c in (1, 3, 2, 0)]  # fastest first
        assert by_speed == sorted(by_speed, reverse=True)


def test_runner_hook_builds_a_planner_from_config_profiles_and_memory_model():
    cfg = SimpleNamespace(lr=2e-5, local_steps=3, q=1, rounds=10, dist="rademacher", seed=0)
    lm = SimpleNamespace(blocks=[SimpleNamespace(numel=int(n)) for n in SIZES * 1000])
    mem = MemoryModel.from_block_sizes(SIZES * 1000)
    profiles = [SimpleNamespace(memory_bytes=b, speed=1.0) for b in budgets_for_counts(mem, [6, 5, 3, 2])]
    p = make_zorba_planner(cfg, lm, profiles, mem)
    plan = p.plan(0, [0, 1, 2, 3])
    assert set().union(*plan.values()) == set(range(len(SIZES)))


def test_the_runner_builds_the_zorba_planner_for_a_real_model(tiny_models):
    """The wiring only (a full run is the engine's end-to-end test): runner.make_planner with the
    run's memory model and default profiles gives a ZorbaPlanner whose plans fit the budgets."""
    from zorba.config import make_config
    from zorba.models import load_model
    from zorba.runner import client_memory_model, client_profiles, make_planner

    cfg = make_config(model=str(tiny_models["opt"]), clients=4, planner="bound", local_steps=2)
    lm = load_model(cfg.model)
    mem = client_memory_model(cfg, lm)
    profiles = client_profiles(cfg, mem)
    p = make_planner(cfg, lm, profiles, mem)
    assert isinstance(p, ZorbaPlanner)
    plan = p.plan(0, [0, 1, 2, 3])
    assert set().union(*plan.values()) == set(range(len(lm.blocks)))
    memory_of(mem, plan, [0, 1, 2, 3], p.budgets)


def test_first_principles_memory_model_follows_the_frozen_precision(tiny_models):
    """int8 frozen blocks cost 1 byte per parameter in the planner's default model, bf16 2, fp32 4; an
    active block costs its fp32 weights plus snapshot whatever the frozen dtype (so its delta grows)."""
    from zorba.config import make_config
    from zorba.models import load_model
    from zorba.runner import client_memory_model

    lm = load_model(str(tiny_models["opt"]))
    sizes = np.array([b.numel for b in lm.blocks], dtype=float)
    for precision, frozen in (("int8", 1.0), ("bf16", 2.0), ("fp32", 4.0)):
        mem = client_memory_model(make_config(model=str(tiny_models["opt"]), precision=precision), lm)
        assert mem.base == pytest.approx(frozen * sizes.sum())
        assert np.allclose(mem.delta, (8.0 - frozen) * sizes)


def test_progress_searches_are_remembered_but_bounded(monkeypatch):
    """A repeated participant set reuses its progress search; many different sets (partial
    participation over a long run) keep at most SEARCHES_KEPT of them."""
    from itertools import combinations

    from zorba.planner import zorba_planner
    from zorba.planner.progress import ProgressConstants

    SEARCHES_KEPT = 4
    monkeypatch.setattr(zorba_planner, "SEARCHES_KEPT", SEARCHES_KEPT)

    N, L = 8, len(SIZES)
    p, _ = planner([3] * N)
    rng = np.random.default_rng(0)
    g = rng.normal(size=(N, L, 4))
    p.use_progress(ProgressConstants(np.einsum("nld,mld->lnm", g, g), (g**2).sum(-1) + 1.0, np.full(L, 10.0),
                                     np.full(N, 1 / N), 1e-3, 2))
    sets = list(combinations(range(N), 3))[: SEARCHES_KEPT + 3]
    first = p.plan(0, sets[0])
    assert p.plan(1, sets[0]) == first and len(p._searched) == 1
    for r, ids in enumerate(sets):
        p.plan(r + 2, ids)
    assert len(p._searched) == SEARCHES_KEPT
