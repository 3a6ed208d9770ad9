"""zorba on Flower's simulation engine (Ray): same seeds => the in-process runner's exact weights;
crashed and timed-out ClientApps are reported and catch up; message sizes come from Flower's objects."""

import json

import pytest

from zorba.federation.config import make_config
from zorba.federation.runner import Runner, check_inputs
from zorba.flower.settings import FlowerOptions
from zorba.flower.simulation import run_flower_simulation


@pytest.fixture(scope="module")
def cfg(tiny_models, data_dir):
    # participation < 1: clients sit out rounds and must catch up on what they missed
    return make_config(model=str(tiny_models["opt"]), clients=3, rounds=3, local_steps=2, train_size=60,
                       planner="feasible-round-robin", data_dir=str(data_dir), batch_size=8, max_len=32, lr=3e-3,
                       participation=0.67, measure_memory=False, eval_every=100)


@pytest.fixture(scope="module")
def flower_run(cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("flower") / "out"
    result = run_flower_simulation(cfg, FlowerOptions(round_timeout=120), out, actors=1)
    return result, out


def test_flower_simulation_matches_the_in_process_runner_bit_for_bit(cfg, flower_run):
    result, _ = flower_run
    state = Runner(cfg, check_inputs(cfg)).run()
    assert result["final_model_sha256"] == state.server.replica.digest()
    assert result["final_model_sha256"] != result["base_model_sha256"]
    assert [h["blocks"] for h in result["history"]] == [h["blocks"] for h in state.history]
    assert result["clients_in_sync"] is True


def test_missed_rounds_are_caught_up_by_replay(flower_run):
    history = flower_run[0]["history"]
    sat_out = [h for h in history if h["clients"] < 3]
    assert sat_out, "participation 0.67 should leave a client out of some round"
    last = history[-1]
    # a client's catch-up = the rounds it has not been sent yet, e.g. 2 after sitting out round 1
    assert any(n >= 2 for n in last["catch_up_entries"].values()) or any(
        n >= 2 for h in history for n in h["catch_up_entries"].values())


def test_result_json_compares_flower_message_bytes_with_fedavg(flower_run):
    result, out = flower_run
    on_disk = json.loads((out / "result.json").read_text())
    comm = on_disk["comm"]
    assert on_disk["engine"] == "flower-simulation"
    assert 100 < comm["uplink_bytes_per_client_round"] < 5000
    assert 100 < comm["downlink_bytes_per_client_round"] < 5000
    n_params = sum(b["numel"] for b in on_disk["blocks"])
    assert comm["fedavg_bytes_per_client_round"] == 4 * n_params
    per_client = on_disk["history"][0]["bytes"]
    for sizes in per_client.values():
        assert 0 < sizes["up_content"] < sizes["up"] and 0 < sizes["down_content"] < sizes["down"]
    for name in ("log.jsonl", "model/model.safetensors", "report.md"):
        assert (out / name).is_file(), name


@pytest.mark.slow  # a second Ray simulation with a deliberate 12 s hang
def test_crashed_and_hung_clients_are_reported_and_catch_up(cfg, tmp_path):
    full = cfg.model_copy(update={"participation": 1.0, "rounds": 3})
    faults = "crash:1@0,hang:2@1:12"
    result = run_flower_simulation(full, FlowerOptions(round_timeout=6, faults=faults), actors=2)
    history = result["history"]
    assert list(history[0]["failed"]) == ["1"] and "InjectedCrash" in history[0]["failed"]["1"]  # its type only: no client text
    assert history[0]["reported"] == [0, 2]
    assert list(history[1]["failed"]) == ["2"] and "no reply" in history[1]["failed"]["2"]
    assert history[1]["reported"] == [0, 1]
    # the crashed client's next plan resends round 0's entry; the hung one's resends rounds 0 and 1
    assert history[1]["catch_up_entries"]["1"] == 1
    assert history[2]["catch_up_entries"]["2"] == 2 and history[2]["catch_up_entries"]["0"] == 1
    assert history[2]["reported"] == [0, 1, 2]
    assert result["clients_in_sync"] is True
