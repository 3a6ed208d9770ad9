import json
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from zorba.federation.config import make_config
from zorba.federation.runner import Runner, check_inputs


def zorba(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "zorba", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_tiny_federated_run_lowers_training_loss(tiny_models, data_dir):
    cfg = make_config(model=str(tiny_models["opt"]), clients=4, rounds=12, local_steps=5, train_size=64,
                      planner="all", data_dir=str(data_dir), lr=3e-3, mu=1e-3, batch_size=16, max_len=32,
                      alpha=1.0, measure_memory=False, eval_every=100)
    runner = Runner(cfg, check_inputs(cfg))
    ids, labels = runner.train.ids, runner.train.labels
    before = runner.eval_scorer.loss(ids, labels)
    state = runner.run()
    after = runner.eval_scorer.loss(ids, labels)
    assert after < before - 0.02, (before, after)
    assert np.mean([h["train_loss"] for h in state.history[-3:]]) < np.mean([h["train_loss"] for h in state.history[:3]])
    # Blocks are averaged with each client weighted by its examples (FedAvg's n_k), and the log says so.
    sizes = {c.cid: len(c.indices) for c in state.clients}
    assert len(set(sizes.values())) > 1, sizes  # a skewed split: equal weights would pass unnoticed
    assert all(u.weight == sizes[u.client] for e in state.server.log for u in e.updates)


def test_clients_a_planner_leaves_out_get_no_plan_and_the_run_goes_on(tiny_models, data_dir):
    """all-if-fits: only the default workstation class (clients 0 and 4 of 5) holds every block."""
    cfg = make_config(model=str(tiny_models["bert"]), clients=5, rounds=2, local_steps=1, train_size=40,
                      planner="all-if-fits", data_dir=str(data_dir), batch_size=4, max_len=16,
                      measure_memory=False, eval_every=100)
    runner = Runner(cfg, check_inputs(cfg))
    state = runner.run()
    for h in state.history:
        assert sorted(h["blocks"]) == ["0", "4"] and h["clients"] == h["answered"] == 2
    assert {u.client for e in state.server.log for u in e.updates} == {0, 4}


@pytest.fixture(scope="module")
def cli_run(tiny_models, data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "out"
    proc = zorba("run", "--model", str(tiny_models["gpt2"]), "--clients", "3", "--rounds", "2", "--local-steps", "2",
                 "--train-size", "100", "--data-dir", str(data_dir), "--out", str(out), "--max-len", "32",
                 "--test-file", str(data_dir / "sst2" / "dev.tsv"), "--precision", "int8")
    assert proc.returncode == 0, proc.stderr
    return out


def test_run_writes_all_outputs(cli_run):
    for name in ("result.json", "report.md", "plot.png", "log.jsonl", "model/model.safetensors", "model/config.json"):
        assert (cli_run / name).is_file(), name
    r = json.loads((cli_run / "result.json").read_text())
    for key in ("method", "task", "model", "config", "versions", "accuracy", "test_file_accuracy", "comm", "memory", "history"):
        assert key in r, key
    assert set(r["accuracy"]) == {"initial", "final"} and set(r["test_file_accuracy"]) == {"initial", "final"}
    # the default planner (head): one float32 per head step plus the 16-byte report header
    assert r["config"]["planner"] == "head"
    assert r["comm"]["uplink_bytes_per_client_round"] == 16 + 4 * r["config"]["head_steps"]
    assert all(p > 50 * 2**20 for p in r["memory"]["peak_bytes_per_client"])
    assert r["clients_in_sync"] is True  # int8 working copies on clients; exact fp32 state everywhere
    assert r["config"]["precision"] == "int8"
    assert len(r["history"]) == 2


def test_saved_weights_load_with_from_pretrained(cli_run):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cli_run / "model")
    saved = load_file(str(cli_run / "model" / "model.safetensors"))
    name = next(iter(saved))
    assert (dict(model.named_parameters())[name].detach() == saved[name]).all()


def test_verify_passes_then_detects_tampering(cli_run, tmp_path):
    ok = zorba("verify", str(cli_run))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "bit-identical" in ok.stdout
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(cli_run, bad)
    weights = load_file(str(bad / "model" / "model.safetensors"))
    name = sorted(weights)[3]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-6
    save_file(weights, str(bad / "model" / "model.safetensors"), metadata={"format": "pt"})
    res = zorba("verify", str(bad))
    assert res.returncode == 1 and "differs" in res.stdout
