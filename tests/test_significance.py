from zorba.experiments.significance import mcnemar, pooled_mcnemar


def test_mcnemar_counts_discordant_pairs_and_tests_them():
    labels = [1] * 100
    before = [1] * 50 + [0] * 50
    after = [1] * 48 + [0] * 2 + [1] * 30 + [0] * 20  # 2 broken, 30 fixed
    r = mcnemar(before, after, labels)
    assert (r["right_to_wrong"], r["wrong_to_right"]) == (2, 30)
    assert r["gain_points"] == 28.0 and r["p_value"] < 1e-6
    same = mcnemar(before, before, labels)
    assert same["p_value"] == 1.0 and same["gain_points"] == 0.0
    assert mcnemar([], after, labels) is None


def test_round_line_for_logs():
    from zorba.experiments.job import round_line

    rec = {"round": 2, "answered": 7, "clients": 8, "train_loss": 0.51234, "dev_accuracy": 0.7612, "seconds": 12.34}
    assert round_line(rec, 30) == "round 3/30  clients 7/8  train loss 0.5123  dev acc 76.12%  12.3 s"
    del rec["dev_accuracy"]
    assert "dev acc" not in round_line(rec, 30)


def test_pooled_mcnemar_adds_the_seeds_discordant_examples():
    labels = [1] * 10
    # seed 0: a right on 3 where b is wrong, b right on 1 where a is wrong; seed 1: 4 against 0
    seed0 = ([1, 1, 1, 0, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1, 1, 1])
    seed1 = ([1, 1, 1, 1, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    r = pooled_mcnemar([seed0, seed1], labels)
    assert (r["a_right_b_wrong"], r["a_wrong_b_right"], r["seeds"]) == (7, 1, 2)
    assert r["a_minus_b_points"] == 30.0  # (7 - 1) / 20 examples
    assert 0.05 < r["p_value"] < 0.08  # two-sided binomial 7 of 8: 0.0703
    swapped = pooled_mcnemar([(b, a) for a, b in (seed0, seed1)], labels)
    assert swapped["a_minus_b_points"] == -30.0 and swapped["p_value"] == r["p_value"]
