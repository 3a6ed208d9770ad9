"""`zorba bench`: a 1-method x 1-task x 1-seed matrix on a tiny model writes its tables and plots,
resumes without recomputing, reruns a cell whose config changed, and rejects bad configs in one line."""

import csv
import subprocess
import sys

import pytest

from zorba import bench as bench_mod
from zorba.bench import load_bench_config, run_bench
from zorba.errors import UserError

TOML = """
tasks = ["sst2"]
seeds = [0]
dev_size = 16
measure_memory = {memory}

[run]
model = "{model}"
data_dir = "{data}"
clients = 2
rounds = 2
local_steps = 1
batch_size = 4
max_len = 24
train_size = 40
eval_every = 1
measure_memory = false

[[method]]
name = "decomfl"
lr = {lr}
"""


def write_config(tmp_path, tiny_models, data_dir, lr=1e-3, memory="false"):
    path = tmp_path / "bench.toml"
    path.write_text(TOML.format(model=tiny_models["opt"], data=data_dir, lr=lr, memory=memory))
    return path


def test_tiny_bench_writes_tables_and_resumes(tmp_path, tiny_models, data_dir, monkeypatch):
    out = tmp_path / "out"
    cfg = load_bench_config(write_config(tmp_path, tiny_models, data_dir, memory="true"))
    run_bench(cfg, out, progress=False)
    for name in ("results.md", "results.csv", "accuracy_vs_round.png", "accuracy_vs_bytes.png", "memory.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 1 and rows[0]["method"] == "decomfl" and rows[0]["task"] == "sst2"
    assert float(rows[0]["uplink_bytes_per_client_round"]) == 15 + 4  # header + one scalar
    assert float(rows[0]["peak_client_mem_max_bytes"]) > 0
    assert "| decomfl | sst2 |" in (out / "results.md").read_text()
    cell = out / "cells" / "decomfl__sst2__seed0.json"
    stamp = cell.stat().st_mtime_ns

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished cell was recomputed")

    monkeypatch.setattr(bench_mod, "run_cell", must_not_run)
    run_bench(cfg, out, progress=False)
    assert cell.stat().st_mtime_ns == stamp

    changed = load_bench_config(write_config(tmp_path, tiny_models, data_dir, lr=2e-3, memory="true"))
    with pytest.raises(AssertionError, match="recomputed"):
        run_bench(changed, out, progress=False)


def test_bad_configs_are_one_line_user_errors(tmp_path, tiny_models, data_dir):
    path = write_config(tmp_path, tiny_models, data_dir)
    path.write_text(path.read_text().replace('name = "decomfl"', 'name = "fedsomething"'))
    with pytest.raises(UserError, match="unknown method 'fedsomething'"):
        load_bench_config(path)
    path.write_text(path.read_text().replace('name = "fedsomething"', 'name = "fedkseed"\noptions = { k_seeds = 0 }'))
    with pytest.raises(UserError, match="k_seeds"):
        load_bench_config(path)
    path.write_text(path.read_text().replace("clients = 2", "clients = -1"))
    with pytest.raises(UserError):
        load_bench_config(path)


def test_cli_reports_a_missing_config_with_exit_code_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "zorba", "bench", "--config", str(tmp_path / "none.toml"),
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "no such bench config" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
