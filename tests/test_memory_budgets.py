"""`zorba run --profiles --memory-model`: a run plans against the clients' own budgets and a calibrated
memory model, and result.json says per client its class, budget, the model's prediction and whether
the measured peak stayed within the budget, all in process bytes."""

import json
from types import SimpleNamespace

import numpy as np
import pytest

from zorba.federation import memprobe
from zorba.federation.config import make_config
from zorba.memory.memory_model import MemoryModel
from zorba.memory.profiles import ClientProfile

MIB = 2**20


def _section(monkeypatch, peaks: dict, calibrated: bool) -> dict:
    monkeypatch.setattr(memprobe, "measure", lambda probe, timeout=600: {"process_peak_rss_bytes": peaks[probe.blocks],
                                                                           "runtime_rss_bytes": 400 + len(probe.blocks)})
    cfg = make_config(clients=3, memory_model="calibration.json" if calibrated else None)
    blocks = [SimpleNamespace(numel=n) for n in (100, 10, 10)]
    history = [{"blocks": {"0": [0], "1": [1, 2]}}, {"blocks": {"1": [2]}}]  # client 2 is never planned
    mem = MemoryModel(base=1000.0, delta=np.array([300.0, 20.0, 30.0]), activation=5.0)
    profiles = [ClientProfile("big", 2000.0), ClientProfile("small", 1040.0), ClientProfile("idle", 9000.0)]
    return memprobe.memory_section(cfg, blocks, history, profiles, mem, True, "test")


def test_budgets_predictions_and_the_budget_check_per_client(monkeypatch):
    s = _section(monkeypatch, {(0,): 1500, (1, 2): 1100}, calibrated=True)
    assert s["profile_per_client"] == ["big", "small", "idle"]
    assert s["budget_bytes_per_client"] == [2000.0, 1040.0, 9000.0]
    # base + activation + the deltas of each client's largest planned set (client 1: (1, 2), not (2,))
    assert s["predicted_bytes_per_client"] == [1305.0, 1055.0, 0.0]
    assert s["peak_bytes_per_client"] == [1500, 1100, 0]
    assert s["within_budget"] == [True, False, None]  # 1100 > 1040; client 2 never trained
    assert s["memory_model"].startswith("calibrated")


def test_a_first_principles_model_is_reported_with_the_measured_runtime_added(monkeypatch):
    """Its bytes are tensors only: budgets and predictions get the probes' runtime (the largest RSS
    before the model loaded, here 402) added, so the peaks are checked against process bytes."""
    s = _section(monkeypatch, {(0,): 1500, (1, 2): 1600}, calibrated=False)
    assert s["memory_model"].startswith("first principles") and s["runtime_bytes"] == 402
    assert s["budget_units"] == "process bytes"
    assert s["budget_bytes_per_client"] == [2402.0, 1442.0, 9402.0]
    assert s["predicted_bytes_per_client"] == [1707.0, 1457.0, 0.0]
    assert s["within_budget"] == [True, False, None]  # 1600 > 1442


def _files(tmp_path, model_blocks: int, small_mib: float):
    profiles = tmp_path / "clients.toml"
    profiles.write_text(
        '[[profile]]\nname = "server-grade"\nmemory_mib = 100000\nspeed = 1.0\ncount = 1\n\n'
        f'[[profile]]\nname = "too-small"\nmemory_mib = {small_mib}\nspeed = 0.5\ncount = 1\n'
    )
    model = tmp_path / "memory.json"
    model.write_text(json.dumps(MemoryModel(base=1.0 * MIB, delta=np.full(model_blocks, 1.0 * MIB)).to_dict()))
    return profiles, model


def test_run_plans_against_given_profiles_and_reports_measured_peaks_against_them(tiny_models, data_dir, tmp_path, zorba):
    """The small budget is feasible for the (hand-written) model but far below any real process:
    the run still trains, and result.json says that client went over its budget."""
    profiles, model = _files(tmp_path, model_blocks=3, small_mib=3.5)  # tiny BERT: 3 blocks
    out = tmp_path / "out"
    proc = zorba("run", "--model", str(tiny_models["bert"]), "--clients", "2", "--rounds", "1", "--local-steps", "1",
                 "--train-size", "32", "--data-dir", str(data_dir), "--max-len", "16", "--out", str(out),
                 "--profiles", str(profiles), "--memory-model", str(model), "--planner", "feasible-round-robin")
    assert proc.returncode == 0, proc.stderr
    r = json.loads((out / "result.json").read_text())
    mem = r["memory"]
    assert r["config"]["profiles"] == str(profiles) and r["config"]["memory_model"] == str(model)
    assert mem["profile_per_client"] == ["server-grade", "too-small"]
    assert mem["budget_bytes_per_client"] == [100000 * MIB, 3.5 * MIB]
    # the small client got at most 2 blocks (1 + 2 x 1 MiB <= 3.5 MiB), and the prediction says so
    assert len(r["history"][0]["blocks"]["1"]) <= 2
    assert mem["predicted_bytes_per_client"][1] == (1 + len(r["history"][0]["blocks"]["1"])) * MIB
    assert mem["within_budget"] == [True, False]
    assert "measured peak within budget: 1 of 2 clients" in (out / "report.md").read_text()


@pytest.mark.parametrize("case", ["missing profiles", "model of another size", "calibrated at another max_len",
                                  "calibrated on rounds of one step"])
def test_bad_profiles_or_memory_model_fail_in_one_line_before_any_output(tiny_models, data_dir, tmp_path, zorba, case):
    profiles, model = _files(tmp_path, model_blocks=9 if case == "model of another size" else 3, small_mib=3.5)
    if case == "missing profiles":
        profiles = tmp_path / "nope.toml"
    if case == "calibrated at another max_len":  # activations differ: its bytes are another process's
        model.write_text(json.dumps({**json.loads(model.read_text()), "max_len": 128, "batch_size": 16}))
    if case == "calibrated on rounds of one step":  # a round's peak grows over its first steps
        model.write_text(json.dumps({**json.loads(model.read_text()), "local_steps": 1}))
    out = tmp_path / "out"
    proc = zorba("run", "--model", str(tiny_models["bert"]), "--clients", "2", "--rounds", "1",
                 "--data-dir", str(data_dir), "--out", str(out), "--profiles", str(profiles),
                 "--memory-model", str(model))
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert str(profiles if case == "missing profiles" else model) in proc.stderr
    assert not out.exists()


def test_plans_over_budget_are_listed_and_warned_about_once(monkeypatch):
    from zorba.experiments.job import _budget_warning
    from zorba.memory.profiles import over_budget

    mem = MemoryModel(base=1000.0, delta=np.array([300.0, 20.0, 30.0]), activation=5.0)
    profiles = [ClientProfile("big", 2000.0), ClientProfile("small", 1040.0), ClientProfile("idle", 9000.0)]
    # predicted: base + activation + delta of the set; client 1 with all blocks: 1355 > 1040
    assert over_budget(profiles, mem, {0: [0, 1, 2], 1: [0, 1, 2]}) == [1]
    assert over_budget(profiles, mem, {1: [1]}) == []  # 1025 fits
    assert over_budget(profiles, mem, {}) == []
    assert _section(monkeypatch, {(0,): 1500, (1, 2): 1100}, calibrated=True)["predicted_over_budget_clients"] == [1]
    runner = SimpleNamespace(profiles=profiles, memory_model=mem, cfg=make_config(clients=3, planner="all"))
    warn = _budget_warning(runner)
    assert warn({"round": 0, "blocks": {"0": [0], "1": [1]}}) == ""
    first = warn({"round": 1, "blocks": {"1": [0, 1, 2]}})
    assert "round 1" in first and "[1]" in first and "'all'" in first
    assert warn({"round": 2, "blocks": {"1": [0, 1, 2]}}) == ""  # once per run
