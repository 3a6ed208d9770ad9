"""`zorba plan`: any planner's plan at a round as a client x block table; the epsilon-constraint
front only for the planner that has one."""

from conftest import assert_clean_error


def _rows(stdout: str, clients: int) -> list[str]:
    lines = stdout.strip().splitlines()
    return [ln for ln in lines if ln.split()[0].isdigit()][:clients]


def test_plan_prints_every_clients_blocks_for_a_baseline_planner(zorba, tiny_models):
    res = zorba("plan", "--model", str(tiny_models["bert"]), "--clients", "4", "--planner", "fill")
    assert res.returncode == 0, res.stderr
    assert "'fill', round 0" in res.stdout
    rows = _rows(res.stdout, 4)
    assert len(rows) == 4 and all("#" in r for r in rows)  # fill gives every client its budget's worth
    # the first client's class holds every block (default device classes: 1, 3/4, 1/2, 1/4)
    assert "." not in rows[0].split()[2:-2]


def test_plans_that_redraw_differ_by_round_and_repeat_for_the_same_seed(zorba):
    def plan(round_idx: int) -> list[str]:  # the embedded default: seven blocks leave room to redraw
        res = zorba("plan", "--clients", "4", "--planner", "feasible-random",
                    "--round", str(round_idx))
        assert res.returncode == 0, res.stderr
        return _rows(res.stdout, 4)

    assert plan(1) == plan(1)
    assert any(plan(r) != plan(1) for r in (2, 3, 4))


def test_pareto_is_refused_in_one_line_for_a_planner_without_a_front(zorba, tiny_models, tmp_path):
    res = zorba("plan", "--model", str(tiny_models["bert"]), "--planner", "fill", "--pareto", "--out", str(tmp_path / "p"))
    assert_clean_error(res, "--pareto", "fill")
    assert not (tmp_path / "p").exists()
    ok = zorba("plan", "--model", str(tiny_models["bert"]), "--planner", "zorba", "--pareto", "--out", str(tmp_path / "p"))
    assert ok.returncode == 0, ok.stderr
    assert "Phi" in ok.stdout and (tmp_path / "p" / "pareto.md").is_file()
