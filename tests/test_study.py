"""zorba study: lr chosen on validation per planner, every seed at the chosen lr, resumable cells,
and a summary computed from the committed result files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zorba.errors import UserError
from zorba.experiments.study import StudyConfig, chosen_lr, load_study_config, run_study, seed_dir, tune_dir
from zorba.experiments.study_report import summarize


def _study(tiny_models, data_dir, **over) -> StudyConfig:
    run = dict(model=str(tiny_models["bert"]), data_dir=str(data_dir), clients=4, rounds=2, local_steps=2,
               batch_size=4, max_len=32, train_size=120, validation_size=40, eval_every=1, precision="fp32")
    return StudyConfig(**{"planners": ["all", "zorba"], "seeds": [0, 1], "lr_grid": [1e-3, 1e-2], "jobs": 2,
                          "run": run, **over})


@pytest.mark.slow
def test_study_tunes_on_validation_runs_every_seed_and_resumes(tiny_models, data_dir, tmp_path):
    study = _study(tiny_models, data_dir)
    run_study(study, tmp_path, say=lambda _: None)
    for arm in study.arms():
        p, lr = arm.name, chosen_lr(arm, tmp_path)
        assert lr in study.lr_grid
        for seed in study.seeds:
            r = json.loads((seed_dir(tmp_path, p, seed) / "result.json").read_text())
            assert (r["config"]["planner"], r["config"]["seed"], r["config"]["lr"]) == (p, seed, lr)
            evals = [h for h in r["history"] if "dev_accuracy" in h]
            assert len(evals) == 2 and all({"dev_loss", "validation_accuracy", "validation_loss"} <= set(h) for h in evals)
            preds = json.loads((seed_dir(tmp_path, p, seed) / "predictions.json").read_text())["dev_predictions"]
            assert len(preds) == 872 and set(preds) <= {0, 1}
        assert {int(k) for h in r["history"] for k in h["blocks"]} == set(range(4))
    stamp = (tune_dir(tmp_path, "all", 1e-3) / "result.json").stat().st_mtime_ns
    run_study(study, tmp_path, say=lambda _: None)  # resumed: nothing to do, nothing rewritten
    assert (tune_dir(tmp_path, "all", 1e-3) / "result.json").stat().st_mtime_ns == stamp
    summary = summarize(tmp_path)
    assert summary["target"] == pytest.approx(
        sum(json.loads((seed_dir(tmp_path, "all", s) / "result.json").read_text())["accuracy"]["final"]
            for s in (0, 1)) / 2)
    assert summary["paired"]["all"]["zorba"]["a_minus_b_points"] == pytest.approx(
        -summary["paired"]["zorba"]["all"]["a_minus_b_points"])
    assert summary["paired"]["zorba"]["all"] == summary["planners"]["zorba"]["paired_vs_reference"]
    paired = summary["planners"]["zorba"]["paired_vs_reference"]  # zorba against all, seeds pooled
    assert paired["seeds"] == 2 and 0.0 <= paired["p_value"] <= 1.0
    finals = {p: [json.loads((seed_dir(tmp_path, p, s) / "result.json").read_text())["accuracy"]["final"]
                  for s in (0, 1)] for p in ("all", "zorba")}
    assert paired["a_minus_b_points"] == pytest.approx(50 * (sum(finals["zorba"]) - sum(finals["all"])))
    assert "paired_vs_reference" not in summary["planners"]["all"]
    assert (tmp_path / "convergence.png").stat().st_size > 10_000


def test_study_config_errors_are_one_line(tmp_path):
    bad = tmp_path / "s.toml"
    bad.write_text('planners = ["nope"]\nseeds = [0]\nlr_grid = [1e-4]\n[run]\nvalidation_size = 10\n')
    with pytest.raises(UserError, match="unknown planners"):
        load_study_config(bad)
    bad.write_text('planners = ["all"]\nseeds = [0]\nlr_grid = [1e-4]\n[run]\nrounds = 3\n')
    with pytest.raises(UserError, match="validation"):
        load_study_config(bad)


def test_a_study_folder_of_other_run_options_is_refused_before_any_cell(tiny_models, data_dir, tmp_path):
    """Cells are skipped by name, so mixing in cells run with other shared options would be silent."""
    study = _study(tiny_models, data_dir)
    (tmp_path / "study.json").write_text(json.dumps(study.model_dump(mode="json")))
    changed = _study(tiny_models, data_dir, run={**study.run, "rounds": 3})
    with pytest.raises(UserError, match="other run options"):
        run_study(changed, tmp_path, say=lambda _: None)
    assert not (tmp_path / "tune").exists()
    (tmp_path / "study.json").write_text("[1, 2]")
    with pytest.raises(UserError, match="not a study record"):
        run_study(study, tmp_path, say=lambda _: None)


def test_a_seed_cell_run_at_a_no_longer_chosen_lr_runs_again(tiny_models, data_dir, tmp_path):
    """The grid grew and another lr won on validation: the seed cells of the old lr are stale."""
    from zorba.experiments.study import next_cells

    study = _study(tiny_models, data_dir, planners=["all"], lr_grid=[1e-3, 1e-2])
    for lr, acc in ((1e-3, 0.6), (1e-2, 0.7)):
        (tune_dir(tmp_path, "all", lr)).mkdir(parents=True)
        record = {"config": {"lr": lr}, "history": [{"validation_accuracy": acc, "validation_loss": 0.5}]}
        (tune_dir(tmp_path, "all", lr) / "result.json").write_text(json.dumps(record))
    stale = seed_dir(tmp_path, "all", 1)
    stale.mkdir(parents=True)
    (stale / "result.json").write_text(json.dumps({"config": {"lr": 1e-3}}))
    cells = next_cells(study.arms(), study.seeds, study.tune_seed, tmp_path, set())
    assert [(lr, seed) for _, lr, seed, _ in cells] == [(1e-2, 1)]
    assert not stale.exists()
    assert json.loads((seed_dir(tmp_path, "all", 0) / "result.json").read_text())["config"]["lr"] == 1e-2


def test_a_study_with_tuning_runs_only_summarizes_its_grid(tmp_path):
    for planner, lr, accs in (("all", 1e-4, (0.70, 0.74)), ("all", 2e-4, (0.72, 0.80)), ("fill", 1e-4, (0.6, 0.5))):
        cell = tune_dir(tmp_path, planner, lr)
        cell.mkdir(parents=True)
        history = [{"round": r, "validation_accuracy": a, "validation_loss": 1 - a} for r, a in enumerate(accs)]
        (cell / "result.json").write_text(json.dumps({"config": {"lr": lr, "planner": planner}, "history": history}))
    summary = summarize(tmp_path)
    assert summary["planners"] == {} and summary["target"] is None
    assert summary["tuning_validation_accuracy"] == {"all": {"0.0001": pytest.approx(0.72), "0.0002": pytest.approx(0.76)},
                                                     "fill": {"0.0001": pytest.approx(0.55)}}
    text = (tmp_path / "summary.md").read_text()
    assert text.startswith("No planner has a seed run yet.")
    assert "| all | 72.00 | 76.00 |" in text and "| fill | 55.00 | - |" in text
    assert not (tmp_path / "convergence.png").exists()


def test_grid_edges_are_judged_on_the_values_tried():
    from zorba.experiments.study_report import mark_grid_edges

    rows = {"a": {"lr": 2e-4}, "b": {"lr": 1e-4}, "c": {"lr": 2e-4}}
    tuning = {"a": {5e-5: 0.7, 1e-4: 0.71, 2e-4: 0.72}, "b": {5e-5: 0.7, 1e-4: 0.72, 2e-4: 0.71},
              "c": {1e-4: 0.7, 2e-4: 0.72, 4e-4: 0.5}}
    mark_grid_edges(rows, tuning)
    assert [rows[p]["lr_at_grid_edge"] for p in "abc"] == [True, False, False]
    assert rows["c"]["lr_grid"] == [1e-4, 2e-4, 4e-4]


def test_the_claims_are_answered_for_the_papers_planner_and_the_default_one():
    from zorba.experiments.study_report import claims, default_planner

    default = default_planner()
    assert default != "zorba"

    def row(final, reached, seeds=(0, 1, 2)):
        return {"seeds": list(seeds), "final_mean": final, "zero_shot": 0.70, "rounds_to_target_mean_curve": reached}

    rows = {"all": row(0.72, 20), "zorba": row(0.71, None), default: row(0.73, 10), "fill": row(0.715, 30),
            "fedra": row(0.69, None, seeds=(0,))}
    c = claims(rows)
    assert c["zorba"]["rounds_ratio_over_all"] is None and not c["zorba"]["faster_by_0.7x"]
    assert c["zorba"]["ahead_at_final_round"] == {default: False, "fill": False}  # fedra ran other seeds
    assert c[default]["rounds_ratio_over_all"] == 0.5 and c[default]["faster_by_0.7x"]
    assert c[default]["ahead_of_every_other_feasible_planner"]
    rows["all"]["final_mean"] = 0.69  # all ends below zero-shot: there is no progress to time
    assert claims(rows)[default]["rounds_ratio_over_all"] is None


_KILLED_PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from zorba.experiments.study import _cell_worker_init

def cell(path):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(120)

if __name__ == "__main__":
    with ProcessPoolExecutor(1, mp_context=get_context("spawn"), initializer=_cell_worker_init,
                             initargs=(os.getpid(),)) as pool:
        pool.submit(cell, sys.argv[1]).result()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_study_stopped_by_its_pid_leaves_no_cell_running(tmp_path):
    """`kill <pid>` reaches the study's main process only; its cell workers must end with it."""
    script, pid_file = tmp_path / "parent.py", tmp_path / "worker.pid"
    script.write_text(_KILLED_PARENT)
    parent = subprocess.Popen([sys.executable, str(script), str(pid_file)])
    deadline = time.monotonic() + 60
    while not (pid_file.is_file() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    worker = int(pid_file.read_text())
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{worker}").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    alive = Path(f"/proc/{worker}").exists()
    if alive:
        os.kill(worker, signal.SIGKILL)
    assert not alive, "the cell worker outlived the study's process"
