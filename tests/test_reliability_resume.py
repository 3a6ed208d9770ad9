"""Crash safety: SIGKILL a run at chosen points (mid-round, mid-write, mid-publish...), resume it, and
the final weights are bit-identical to an uninterrupted run with the same config."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from zorba.experiments.job import run_job
from zorba.federation.config import make_config
from zorba.federation.reliability import Reliability
from zorba.federation.results import verify
from zorba.federation.resume import resume_options

torch.set_num_threads(1)  # the forked children below must not inherit a live OpenMP pool

ROUNDS = 5
REL = Reliability(dropout=0.3, aggregate="median")  # exercise dropouts and split updates on resume too


@pytest.fixture(scope="module")
def small_data(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("data")
    (root / "sst2").mkdir()
    for name, n in (("train", 80), ("dev", 32)):
        lines = (data_dir / "sst2" / f"{name}.tsv").read_text().splitlines()[: n + 1]
        (root / "sst2" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def cfg(tiny_models, small_data):
    return make_config(model=str(tiny_models["bert"]), clients=4, rounds=ROUNDS, local_steps=2, batch_size=8,
                       max_len=16, data_dir=str(small_data), lr=1e-3, measure_memory=False, eval_every=2, seed=3)


@pytest.fixture(scope="module")
def reference(cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    result = run_job(cfg, out, progress=False, reliability=REL)
    return out, result


def run_in_child(crash_at: str | None, fn) -> int:
    """Run fn() in a forked child that SIGKILLs itself at `crash_at`; return its wait status."""
    pid = os.fork()
    if pid == 0:  # child
        code = 1
        try:
            if crash_at:
                os.environ["ZORBA_CRASH_AT"] = crash_at
            fn()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def killed(status: int) -> bool:
    return os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


def assert_same_weights(out, reference):
    ref_out, ref = reference
    result = json.loads((out / "result.json").read_text())
    assert result["final_model_sha256"] == ref["final_model_sha256"]
    a, b = load_file(str(out / "model" / "model.safetensors")), load_file(str(ref_out / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (out / "log.jsonl").read_text() == (ref_out / "log.jsonl").read_text()
    assert result["accuracy"]["final"] == ref["accuracy"]["final"]
    assert result["dev_significance"] == ref["dev_significance"] and ref["dev_significance"] is not None
    assert len(result["history"]) == ROUNDS


# point:n = the n-th time the process reaches that point (see zorba.federation.durable.crash_point)
CRASHES = [
    "run-started:1",  # header and initial evaluation written, no round yet
    "report-received:3",  # mid-round: some clients have reported, nothing logged
    "log-torn:3",  # half of round 2's log record on disk
    "round-logged:2",  # round 1 durable but not applied, not recorded
    "rounds-torn:3",  # half of round 1's metrics record on disk
    "round-recorded:4",  # between rounds
    "publish:3",  # some outputs moved into place, result.json not yet
]


@pytest.mark.parametrize("crash_at", CRASHES)
def test_killed_run_resumes_bit_identical(crash_at, cfg, reference, tmp_path):
    out = tmp_path / "run"
    status = run_in_child(crash_at, lambda: run_job(cfg, out, progress=False, reliability=REL))
    assert killed(status), f"child was not killed at {crash_at} (status {status})"
    assert not (out / "result.json").exists()
    stored_cfg, stored_rel = resume_options(out)
    assert stored_cfg == cfg and stored_rel == REL
    run_job(stored_cfg, out, progress=False, reliability=stored_rel, resume=True)
    assert_same_weights(out, reference)


def test_killed_again_while_resuming(cfg, reference, tmp_path):
    """Random points (seeded), each resume killed again, until a resume finishes."""
    out, rng = tmp_path / "run", random.Random(7)
    points = ["report-received", "log-torn", "round-logged", "rounds-torn", "round-recorded"]
    kills = 0
    for attempt in range(4):
        crash_at = f"{rng.choice(points)}:{rng.randint(1, 3)}"
        resume = attempt > 0
        status = run_in_child(crash_at, lambda r=resume: run_job(cfg, out, progress=False, reliability=REL, resume=r))
        kills += killed(status)
        if not killed(status):
            assert status == 0
            break
    assert kills >= 2
    if not (out / "result.json").exists():
        run_job(cfg, out, progress=False, reliability=REL, resume=True)
    assert_same_weights(out, reference)


def test_cli_resume_after_sigkill(cfg, reference, tmp_path):
    """The real command line: `zorba run` killed mid-write, `zorba run --resume DIR` finishes it."""
    out = tmp_path / "run"
    args = ["--model", cfg.model, "--clients", "4", "--rounds", str(ROUNDS), "--local-steps", "2", "--batch-size", "8",
            "--max-len", "16", "--data-dir", cfg.data_dir, "--lr", "1e-3", "--no-measure-memory", "--eval-every", "2",
            "--seed", "3", "--dropout", "0.3", "--aggregate", "median", "--out", str(out)]
    env = {**os.environ, "ZORBA_CRASH_AT": "log-torn:4", "OMP_NUM_THREADS": "1"}
    first = subprocess.run([sys.executable, "-m", "zorba", "run", *args], capture_output=True, text=True, env=env)
    assert first.returncode == -signal.SIGKILL, first.stderr
    env.pop("ZORBA_CRASH_AT")
    second = subprocess.run([sys.executable, "-m", "zorba", "run", "--resume", str(out)], capture_output=True,
                            text=True, env=env)
    assert second.returncode == 0, second.stderr
    assert_same_weights(out, reference)
    ok, message = verify(out)
    assert ok, message


def test_resumed_history_marks_recovered_round(cfg, tmp_path):
    out = tmp_path / "run"
    assert killed(run_in_child("round-logged:2", lambda: run_job(cfg, out, progress=False, reliability=REL)))
    result = run_job(cfg, out, progress=False, reliability=REL, resume=True)
    assert [h["round"] for h in result["history"]] == list(range(ROUNDS))
    assert [h.get("recovered", False) for h in result["history"]] == [False, True, False, False, False]
    assert "dev_accuracy" in result["history"][1]  # round 2 is an evaluation round: re-evaluated on resume


def test_unused_staging_folder_is_cleaned(cfg, reference, tmp_path):
    out = tmp_path / "run"
    assert killed(run_in_child("publish:2", lambda: run_job(cfg, out, progress=False, reliability=REL)))
    assert list(out.glob(".staging-*"))
    run_job(cfg, out, progress=False, reliability=REL, resume=True)
    assert not list(out.glob(".staging-*"))
    shutil.rmtree(out)
