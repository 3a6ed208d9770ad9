"""Theorem 2 of docs/theory.md (uncovered blocks add G_l^2) and effective sizes (coordinates the loss
ignores do not count in the ZO noise)."""

import itertools

import numpy as np
import pytest
import torch

from zorba.models import load_model
from zorba.planner.bound import BoundConstants, bound, per_round_terms, plan_bound, sequence_bound
from zorba.planner.estimate import effective_block_sizes


def consts(**kw) -> BoundConstants:
    base = dict(
        block_sizes=np.array([100.0, 40.0, 40.0, 20.0]),
        G2=np.array([2.0, 1.0, 0.5, 0.3]),
        zeta2=np.array([1.0, 0.4, 0.2, 0.1]),
        lr=1e-3, local_steps=3, rounds=50, perturbations=1,
    )
    return BoundConstants(**{**base, **kw})


UNCOVERED_2 = np.array([[1, 1, 0, 0], [0, 1, 0, 1], [1, 0, 0, 1]], float)  # block 2 never covered


def test_an_uncovered_block_adds_its_gradient_floor_instead_of_infinity():
    c = consts()
    assert bound(UNCOVERED_2, c) == np.inf  # Theorem 1, every block required: unchanged
    covered_part = bound(UNCOVERED_2, c, required=np.array([True, True, False, True]))
    assert plan_bound(UNCOVERED_2, c) == pytest.approx(covered_part + c.G2[2], rel=1e-12)


def test_theorem_2_equals_theorem_1_for_a_plan_covering_every_block():
    c = consts()
    A = UNCOVERED_2.copy()
    A[0, 2] = 1
    assert np.isfinite(bound(A, c))
    assert plan_bound(A, c) == pytest.approx(bound(A, c), rel=1e-12)


def test_a_larger_gradient_floor_makes_leaving_the_block_out_worse():
    small, large = consts(), consts(G2=np.array([2.0, 1.0, 5.0, 0.3]))
    full = np.ones((3, 4))
    # Leaving block 2 out costs G_2^2; holding it costs noise that also grows with G_2^2, but by
    # eta-weighted terms that are small here: the floor dominates the difference.
    gap_small = plan_bound(UNCOVERED_2, small) - plan_bound(full, small)
    gap_large = plan_bound(UNCOVERED_2, large) - plan_bound(full, large)
    assert gap_large > gap_small


def test_a_sequence_of_plans_is_scored_by_the_mean_of_its_rounds():
    c = consts()
    full = np.ones((3, 4))
    assert sequence_bound([UNCOVERED_2] * 5, c) == pytest.approx(plan_bound(UNCOVERED_2, c))
    mixed = sequence_bound([UNCOVERED_2, full], c)
    assert mixed == pytest.approx((plan_bound(UNCOVERED_2, c) + plan_bound(full, c)) / 2)


def test_uncovered_terms_are_reported_per_block():
    terms = per_round_terms(UNCOVERED_2[None], consts())
    assert terms.uncovered_per_block[0].tolist() == [0.0, 0.0, 0.5, 0.0]
    assert terms.uncovered[0] == 0.5


# --- effective sizes --------------------------------------------------------------------------------
def test_effective_sizes_default_to_block_sizes_and_change_nothing_then():
    c = consts()
    assert np.array_equal(c.effective_sizes, c.block_sizes)
    explicit = consts(effective_sizes=c.block_sizes.copy())
    A = np.ones((3, 4))
    assert plan_bound(A, explicit) == plan_bound(A, c)


def test_a_smaller_effective_size_lowers_the_noise_but_not_the_bias():
    raw = consts()
    eff = consts(effective_sizes=np.array([10.0, 40.0, 40.0, 20.0]))  # block 0: most rows unused
    A = np.ones((3, 4))
    A[1, 0] = 0
    t_raw, t_eff = per_round_terms(A[None], raw), per_round_terms(A[None], eff)
    assert np.allclose(t_raw.bias, t_eff.bias)
    # every block held by a client that holds block 0 gets less noise (r_0 D_n instead of d_0 D_n)
    assert np.all(t_eff.variance_per_block[0] <= t_raw.variance_per_block[0])
    assert t_eff.variance[0] < t_raw.variance[0] and t_eff.drift[0] < t_raw.drift[0]


@pytest.mark.parametrize("bad", [[0.0, 40, 40, 20], [101.0, 40, 40, 20], [10.0, 40, 40]])
def test_effective_sizes_must_be_positive_at_most_the_block_size_and_one_per_block(bad):
    with pytest.raises(ValueError):
        consts(effective_sizes=np.array(bad))


def test_projected_fourth_moment_counts_only_the_coordinates_the_gradient_lives_on():
    """Lemma 2 with the projection: g is zero off I, so E|(u.g) Pi u_l|^2 = r_l |g|^2 + (1+kappa)|g_l|^2
    with kappa = -1 (Rademacher), enumerated exactly over all sign vectors."""
    g = np.array([0.7, -1.3, 0.0, 0.0, 2.1, 0.0])  # coordinates 2, 3, 5 unused by the loss
    used = g != 0
    block = np.array([True, True, True, True, False, False])  # block l = coordinates 0..3, r_l = 2
    total = 0.0
    signs = list(itertools.product([-1.0, 1.0], repeat=len(g)))
    for u in map(np.array, signs):
        total += (u @ g) ** 2 * np.sum((u * (block & used)) ** 2)
    r_l = int((block & used).sum())
    assert total / len(signs) == pytest.approx(r_l * g @ g + 0.0 * np.sum(g[block] ** 2))


def test_effective_block_sizes_drop_embedding_rows_no_input_looks_up(tiny_models):
    lm = load_model(str(tiny_models["bert"]))
    ids = torch.tensor([[101, 2023, 2003, 102], [101, 2307, 2003, 102]])
    with torch.no_grad():
        r = effective_block_sizes(lm.model, lm.blocks, lambda: lm.model(input_ids=ids))
    emb = lm.model.embeddings
    hidden = emb.word_embeddings.weight.shape[1]
    words = len({101, 2023, 2003, 102, 2307})
    expected = hidden * (words + 4 + 1) + sum(p.numel() for p in emb.LayerNorm.parameters())  # 4 positions, 1 type
    assert r[0] == expected
    assert np.array_equal(r[1:], [b.numel for b in lm.blocks[1:]])


def test_a_table_tied_to_the_output_layer_counts_in_full(tiny_models):
    lm = load_model(str(tiny_models["gpt2"]))
    ids = torch.tensor([[464, 3290, 318]])
    with torch.no_grad():
        r = effective_block_sizes(lm.model, lm.blocks, lambda: lm.model(input_ids=ids))
    wte, wpe = lm.model.transformer.wte.weight, lm.model.transformer.wpe.weight
    unused_positions = (wpe.shape[0] - 3) * wpe.shape[1]
    assert r[0] == lm.blocks[0].numel - unused_positions  # wte is the (tied) output layer too: kept
    assert wte.numel() <= r[0]
