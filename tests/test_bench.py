"""`zorba bench` on tiny models: each row's lr is the validation-best of its grid (dev is never read for
it) and every seed runs at it; finished cells are skipped on resume and a folder of other options is
refused; equal-memory rows use the clients whose budget holds the probe's measured peak; the summary
is computed from the files; bad configs are one-line errors; the shipped configs load."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import assert_clean_error

from zorba.errors import UserError
from zorba.experiments import bench as bench_mod
from zorba.experiments.bench import BenchConfig, load_bench_config, run_bench
from zorba.experiments.bench_report import BEGIN, END, include, summarize
from zorba.experiments.study import Arm, chosen_lr, seed_dir, tune_dir

REPO = Path(__file__).resolve().parents[1]
QUIET = dict(say=lambda _: None)


def config(tiny_models, data_dir, methods=(("decomfl", [1e-3, 3e-2]),), **over) -> BenchConfig:
    run = dict(model=str(tiny_models["opt"]), data_dir=str(data_dir), clients=2, rounds=2, local_steps=1, batch_size=4,
               max_len=24, train_size=48, validation_size=16, eval_every=1, precision="fp32")
    values = dict(tasks=["sst2"], seeds=[0, 1, 2], jobs=1, dev_size=16, reference="decomfl", measure_memory=False,
                  run=run, method=[{"name": n, "lr_grid": g} for n, g in methods])
    return BenchConfig(**{**values, **over})


@pytest.fixture(scope="module")
def finished(tiny_models, data_dir, tmp_path_factory):
    """One tiny bench run: decomfl, an lr grid of two, three seeds."""
    out = tmp_path_factory.mktemp("bench")
    bench = config(tiny_models, data_dir)
    run_bench(bench, out, **QUIET)
    return bench, out


def _result(where: Path) -> dict:
    return json.loads((where / "result.json").read_text())


def _tuning_run(lr: float, validation: list[float], dev: float) -> dict:
    history = [{"round": r, "validation_accuracy": v, "validation_loss": 0.7, "dev_accuracy": dev}
               for r, v in enumerate(validation)]
    return {"config": {"lr": lr}, "history": history}


def test_tuning_picks_the_validation_best_lr_whatever_dev_says(tmp_path):
    arm = Arm("sst2/m", (1e-3, 1e-2, 1e-1), {}, bench_mod.run_method_cell)
    runs = {1e-3: _tuning_run(1e-3, [0.50, 0.60], dev=0.9), 1e-2: _tuning_run(1e-2, [0.60, 0.70], dev=0.1),
            1e-1: _tuning_run(1e-1, [0.90, 0.30], dev=0.9)}
    for lr, r in runs.items():
        tune_dir(tmp_path, arm.name, lr).mkdir(parents=True)
        if lr != 1e-1:
            (tune_dir(tmp_path, arm.name, lr) / "result.json").write_text(json.dumps(r))
    assert chosen_lr(arm, tmp_path) is None  # not before the whole grid is done
    (tune_dir(tmp_path, arm.name, 1e-1) / "result.json").write_text(json.dumps(runs[1e-1]))
    assert chosen_lr(arm, tmp_path) == 1e-2  # best mean of the last two validation accuracies
    for r in runs.values():  # without any dev field the choice is the same: dev is not read
        for h in r["history"]:
            del h["dev_accuracy"]
    for lr, r in runs.items():
        (tune_dir(tmp_path, arm.name, lr) / "result.json").write_text(json.dumps(r))
    assert chosen_lr(arm, tmp_path) == 1e-2


def test_every_seed_runs_at_the_chosen_lr_with_validation_scored(finished):
    bench, out = finished
    arm = bench.arm(bench.rows()[0], "sst2", None)
    lr = chosen_lr(arm, out)
    assert lr in (1e-3, 3e-2)
    for seed in bench.seeds:
        r = _result(seed_dir(out, arm.name, seed))
        assert (r["label"], r["config"]["seed"], r["config"]["lr"]) == ("decomfl", seed, lr)
        assert (r["train_examples"], r["validation_examples"], r["dev_examples"]) == (32, 16, 16)
        assert all({"dev_accuracy", "dev_loss", "validation_accuracy", "validation_loss"} <= set(h) for h in r["history"])
        assert r["comm"]["uplink_bytes_per_client_round"] > 0 and r["versions"]["torch"]
        preds = json.loads((seed_dir(out, arm.name, seed) / "predictions.json").read_text())
        assert len(preds["dev_predictions"]) == len(preds["dev_indices"]) == 16
    assert _result(seed_dir(out, arm.name, 0)) == _result(tune_dir(out, arm.name, lr))  # tune_seed's = its tuning run


def test_resume_skips_finished_cells_and_refuses_other_options(finished, tmp_path, monkeypatch):
    bench, src = finished
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    shutil.rmtree(seed_dir(out, "sst2/decomfl", 2))
    ran = []
    real = bench_mod.run_method_cell
    monkeypatch.setattr(bench_mod, "run_method_cell", lambda arm, lr, seed: ran.append(seed) or real(arm, lr, seed))
    stamp = (seed_dir(out, "sst2/decomfl", 1) / "result.json").stat().st_mtime_ns
    run_bench(bench, out, **QUIET)
    assert ran == [2]
    assert (seed_dir(out, "sst2/decomfl", 1) / "result.json").stat().st_mtime_ns == stamp
    run_bench(bench, out, **QUIET)
    assert ran == [2]
    changed = bench.model_copy(update={"run": {**bench.run, "rounds": 3}})
    with pytest.raises(UserError, match="other run options"):
        run_bench(changed, out, **QUIET)
    other_mu = BenchConfig.model_validate({**bench.model_dump(), "method": [{"name": "decomfl", "lr_grid": [1e-3], "mu": 1e-2}]})
    with pytest.raises(UserError, match="other run options"):  # same label, other method options
        run_bench(other_mu, out, **QUIET)
    assert ran == [2]


def test_summary_is_computed_from_the_files(finished, tmp_path):
    _, src = finished
    out = tmp_path / "copy"
    shutil.copytree(src, out)
    before = summarize(out)["tasks"]["sst2"]["rows"][0]
    assert before["status"] == "ran" and len(before["seeds"]) == 3 and before["clients_used"] == 2
    assert [g["chosen"] for g in before["lr_grid"]].count(True) == 1
    # run time: two tuning runs and seeds 1, 2 (seed 0's cell is the chosen tuning run, counted once)
    cells = [_result(p.parent) for p in sorted(out.glob("tune/sst2/decomfl/lr*/result.json"))]
    cells += [_result(seed_dir(out, "sst2/decomfl", s)) for s in (1, 2)]
    cost = summarize(out)["tasks"]["sst2"]["cost"]
    assert cost == {"runs": 4, "seconds": pytest.approx(sum(c["seconds"] for c in cells)), "jobs": 1, "probe_seconds": None}
    assert "memory probes not timed" in (out / "summary.md").read_text()  # this bench measured no memory
    path = seed_dir(out, "sst2/decomfl", 1) / "result.json"
    r = json.loads(path.read_text())
    r["history"][-1]["dev_accuracy"] = r["accuracy"]["final"] = 1.0
    path.write_text(json.dumps(r))
    summary = summarize(out)
    after = summary["tasks"]["sst2"]["rows"][0]
    assert after["final_mean"] == pytest.approx(before["final_mean"] + (1.0 - before["finals"][1]) / 3)
    assert f"{100 * after['final_mean']:.1f} ±" in (out / "summary.md").read_text()
    for name in ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "accuracy_vs_client_seconds.png", "memory.png"):
        assert (out / name).stat().st_size > 5_000, name
    doc = tmp_path / "results.md"
    doc.write_text(f"# Results\n\nbefore\n{BEGIN}\nold table\n{END}\nafter\n")
    include(summary, out, doc)
    text = doc.read_text()
    assert "old table" not in text and text.startswith("# Results\n\nbefore\n") and text.endswith(f"{END}\nafter\n")
    assert "| decomfl | 2 / 2 |" in text and "](copy/accuracy_vs_round.png)" in text


@pytest.mark.parametrize("fits", [2, 0])
def test_equal_memory_rows_use_the_clients_whose_budget_holds_the_measured_peak(fits, tiny_models, data_dir, tmp_path,
                                                                                 monkeypatch):
    """The probe is replaced by a measurement between two budgets (or above all): the equal-memory row
    trains with exactly the clients whose budget (process bytes: model budget + runtime) holds it."""
    from zorba.experiments.bench_memory import budget_section
    from zorba.federation import memprobe
    from zorba.methods import probe

    bench = config(tiny_models, data_dir, methods=(("decomfl", [1e-3]), ("zorba-all", [1e-3])), seeds=[0],
                   reference=None, measure_memory=True, equal_memory=True, run={**config(tiny_models, data_dir).run, "clients": 4})
    runtime = 300 * 2**20
    budgets = budget_section(bench.run_config(bench.rows()[0], "sst2"), 0, runtime)["budget_bytes_per_client"]
    ranked = sorted(budgets, reverse=True)
    peak = int((ranked[1] + ranked[2]) / 2) if fits else int(ranked[0] + 1)
    measured = {"process_peak_rss_bytes": peak, "runtime_rss_bytes": runtime}
    monkeypatch.setattr(probe, "measure", lambda *a, **k: measured)
    monkeypatch.setattr(memprobe, "measure", lambda *a, **k: measured)
    run_bench(bench, tmp_path, **QUIET)
    admitted = [c for c, b in enumerate(budgets) if b >= peak]
    assert len(admitted) == fits
    for method in ("decomfl", "zorba-all"):
        plain = _result(seed_dir(tmp_path, f"sst2/{method}", 0))
        assert [h["clients"] for h in plain["history"]] == [4, 4]
        record = json.loads((tmp_path / "memory" / "sst2" / f"{method}-equal-memory.json").read_text())
        assert record["clients_used"] == admitted
        equal = seed_dir(tmp_path, f"sst2/{method}-equal-memory", 0)
        if not fits:
            assert not equal.exists()
            continue
        r = _result(equal)
        assert r["clients_used"] == admitted and [h["clients"] for h in r["history"]] == [fits, fits]
        if method == "decomfl":  # a re-probe that admits other clients: the finished cells are not reused
            path = tmp_path / "memory" / "sst2" / "decomfl-equal-memory.json"
            original = path.read_text()
            path.write_text(json.dumps({**record, "clients_used": admitted[:1]}))
            with pytest.raises(UserError, match="ran with clients"):
                run_bench(bench, tmp_path, **QUIET)
            path.write_text(original)
        if method == "zorba-all":
            assert all({int(c) for c in h["blocks"]} == set(admitted) for h in r["history"])
    summary = summarize(tmp_path)["tasks"]["sst2"]
    records = [json.loads(p.read_text()) for p in (tmp_path / "memory" / "sst2").glob("*.json")]
    assert summary["cost"]["probe_seconds"] == pytest.approx(sum(r["seconds"] for r in records))
    assert "min of memory probes" in (tmp_path / "summary.md").read_text()
    rows = {r["label"]: r for r in summary["rows"]}
    assert rows["decomfl (equal memory)"]["clients_used"] == fits and rows["decomfl"]["clients_used"] == 4
    assert rows["decomfl"]["clients_within_budget"] == fits and rows["decomfl"]["peak_bytes_max"] == peak
    if not fits:
        assert rows["decomfl (equal memory)"]["status"].startswith("not run: no client's budget")


def test_bad_configs_are_one_line_user_errors(tmp_path):
    path = tmp_path / "bench.toml"
    good = 'seeds = [0]\n[run]\nvalidation_size = 8\n[[method]]\nname = "decomfl"\nlr_grid = [1e-4]\n'
    for text, message in [
        (good.replace('"decomfl"', '"fedsomething"'), "unknown method 'fedsomething'"),
        (good + "options = { k_seeds = 1 }\n", "invalid option k_seeds"),
        (good.replace('"decomfl"', '"fedkseed"') + "options = { k_seeds = 0 }\n", "k_seeds"),
        (good.replace("validation_size = 8", "validation_size = 0"), "validation_size must be > 0"),
        (good.replace("validation_size = 8", "validation_size = 8\nlr = 1e-3"), "'lr' is set by the bench"),
        (good + 'equal_memory = true\n[[method]]\nname = "zorba"\nlr_grid = [1e-4]\nequal_memory = true\n', "own planner fits the budgets"),
        (good.replace("seeds = [0]", "seeds = [0]\nreference = \"zorba\""), "reference 'zorba' is not a method label"),
        (good.replace("seeds = [0]", "seeds = [1]"), "tune_seed must be one of seeds"),
        (good.replace("validation_size = 8", "validation_size = 8\nclients = -1"), "clients"),
    ]:
        path.write_text(text)
        with pytest.raises(UserError, match=message):
            load_bench_config(path)


def test_cli_reports_a_missing_config_with_exit_code_2(zorba, tmp_path):
    assert_clean_error(zorba("bench", "--config", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")),
                       "no such bench config")
    assert_clean_error(zorba("bench", "--summarize-only", "--out", str(tmp_path / "o")), "no <task>/<row>/seed<k>")


def test_the_shipped_configs_load_and_the_full_one_is_the_promised_matrix():
    full = load_bench_config(REPO / "configs" / "bench.toml")
    names = [e.name for e in full.method]
    assert {"fedavg-sgd", "fedavg-adam", "fedavg-lora", "fedzo", "fedkseed", "decomfl", "zorba"} <= set(names)
    assert len(full.seeds) >= 3 and all(len(e.lr_grid) == 2 for e in full.method) and full.equal_memory
    assert full.reference in names and "(equal memory)" in " ".join(r.label for r in full.rows())
    load_bench_config(REPO / "configs" / "bench_short.toml")


@pytest.mark.slow
def test_both_probes_measure_the_same_runtime(tiny_models, data_dir):
    """Every row's budgets add the runtime its probe measured: the baselines' probe and zorba's must
    measure it alike (the model library imported, no model loaded), or rows get different budgets."""
    from zorba.experiments.bench_memory import probe_client
    from zorba.federation.config import make_config

    cfg = make_config(model=str(tiny_models["opt"]), data_dir=str(data_dir), batch_size=4, max_len=24)
    baseline, zorba_all = probe_client("decomfl", {}, cfg, 4), probe_client("zorba-all", {}, cfg, 4)
    assert abs(baseline["runtime_rss_bytes"] - zorba_all["runtime_rss_bytes"]) < 0.05 * zorba_all["runtime_rss_bytes"]
    assert baseline["process_peak_rss_bytes"] > baseline["runtime_rss_bytes"]


def test_the_head_planners_row_is_measured_on_the_blocks_it_planned(tiny_models, data_dir, tmp_path, monkeypatch):
    """zorba's default planner trains the label head, a block the baselines' model lacks: its row's
    peaks are probed on that block and checked against the same device classes' budgets."""
    from zorba.federation import memprobe
    from zorba.methods import probe

    probed = []
    measured = {"process_peak_rss_bytes": 1, "runtime_rss_bytes": 0}
    monkeypatch.setattr(probe, "measure", lambda *a, **k: measured)
    monkeypatch.setattr(memprobe, "measure", lambda p, **k: probed.append(p) or measured)
    bench = config(tiny_models, data_dir, methods=(("zorba", [1e-3]),), seeds=[0], reference=None, measure_memory=True)
    run_bench(bench, tmp_path, **QUIET)
    record = json.loads((tmp_path / "memory" / "sst2" / "zorba.json").read_text())
    planned = {tuple(b) for h in _result(seed_dir(tmp_path, "sst2/zorba", 0))["history"] for b in h["blocks"].values()}
    assert planned == {(4,)}  # tiny OPT: embeddings, 2 layers, the final norm, then the label head
    assert [p.blocks for p in probed] == [(4,)] and probed[0].label_head
    assert record["memory"]["peak_bytes_per_client"] == [1, 1] and len(record["memory"]["budget_bytes_per_client"]) == 2
