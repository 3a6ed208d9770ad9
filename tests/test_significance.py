from zorba.experiments.significance import mcnemar


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
