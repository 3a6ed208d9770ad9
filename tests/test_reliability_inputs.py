"""Bad reliability input: resume folders that are not resumable, from another run or version,
damaged logs, bad options. One clear line, exit code 2, and the folder is left as it was."""

import json
import os
import shutil
import signal

import pytest
import torch
from conftest import assert_clean_error

from zorba.experiments.job import run_job
from zorba.federation.config import make_config
from zorba.federation.durable import frame, sealed

torch.set_num_threads(1)


def crashed_run(cfg, out, point="round-recorded:3"):
    pid = os.fork()
    if pid == 0:
        try:
            os.environ["ZORBA_CRASH_AT"] = point
            run_job(cfg, out, progress=False)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    return out


@pytest.fixture(scope="module")
def cfgs(tiny_models, tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("data")
    (root / "sst2").mkdir()
    for name, n in (("train", 60), ("dev", 16)):
        lines = (data_dir / "sst2" / f"{name}.tsv").read_text().splitlines()[: n + 1]
        (root / "sst2" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    base = dict(model=str(tiny_models["bert"]), clients=3, rounds=4, local_steps=1, batch_size=4, max_len=16,
                data_dir=str(root), measure_memory=False, eval_every=2)
    return make_config(seed=1, **base), make_config(seed=2, **base)


@pytest.fixture(scope="module")
def crashed(cfgs, tmp_path_factory):
    root = tmp_path_factory.mktemp("crashed")
    return crashed_run(cfgs[0], root / "a"), crashed_run(cfgs[1], root / "b")


@pytest.fixture
def run_dir(crashed, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(crashed[0], out)
    return out


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def edit_header(run_dir, reseal=True, **changes):
    """Change header fields; resealed (a consistent header of another run or version) unless told not."""
    path = run_dir / "state" / "header.json"
    header = json.loads(path.read_text())
    header.update(changes)
    path.write_text(json.dumps(sealed(header) if reseal else header))


def test_resume_missing_and_empty_folders(zorba, tmp_path):
    assert_clean_error(zorba("run", "--resume", str(tmp_path / "nope")), "no such run folder")
    (tmp_path / "empty").mkdir()
    assert_clean_error(zorba("run", "--resume", str(tmp_path / "empty")), "no resumable run")
    assert list((tmp_path / "empty").iterdir()) == []


@pytest.mark.parametrize("changes,fragment", [
    ({"format": "zorba-state/0"}, "state format"),
    ({"zorba": "0.0.1"}, "written by zorba '0.0.1'"),
    ({"config": {"clients": "many"}}, "no valid run config"),
    ({"base_model_sha256": "0" * 64}, "content hash differs"),
])
def test_resume_folder_from_another_version_or_model(changes, fragment, zorba, run_dir):
    edit_header(run_dir, **changes)
    before = snapshot(run_dir)
    assert_clean_error(zorba("run", "--resume", str(run_dir)), fragment)
    assert snapshot(run_dir) == before


def test_resume_with_the_log_of_another_run(zorba, run_dir, crashed):
    shutil.copy(crashed[1] / "state" / "log.bin", run_dir / "state" / "log.bin")
    before = snapshot(run_dir)
    assert_clean_error(zorba("run", "--resume", str(run_dir)), "does not belong to this run")
    assert snapshot(run_dir) == before
    assert not (run_dir / "result.json").exists()


def test_resume_with_a_damaged_log(zorba, run_dir):
    log = run_dir / "state" / "log.bin"
    data = bytearray(log.read_bytes())
    data[12] ^= 0xFF  # inside the first record: damage, not a torn tail
    log.write_bytes(bytes(data))
    assert_clean_error(zorba("run", "--resume", str(run_dir)), "damaged")
    assert log.read_bytes() == bytes(data)


def test_resume_with_a_torn_tail_is_repaired(run_dir, cfgs):
    log = run_dir / "state" / "log.bin"
    with log.open("ab") as f:
        f.write(frame(b"a record that never finished")[:-5])
    result = run_job(cfgs[0], run_dir, progress=False, resume=True)
    assert len(result["history"]) == cfgs[0].rounds


def test_resume_rejects_a_changed_option_and_a_finished_run(zorba, run_dir, cfgs):
    assert_clean_error(zorba("run", "--resume", str(run_dir), "--rounds", "9"), "--rounds 9 differs")
    assert_clean_error(zorba("run", "--resume", str(run_dir), "--dropout", "0.5"), "--dropout 0.5 differs")
    res = zorba("run", "--resume", str(run_dir), "--rounds", str(cfgs[0].rounds))
    assert res.returncode == 0, res.stderr
    assert_clean_error(zorba("run", "--resume", str(run_dir)), "already finished")


@pytest.mark.parametrize("option,value", [("--dropout", "1.5"), ("--deadline", "0"), ("--clip", "-1"),
                                          ("--aggregate", "magic"), ("--trim", "0.7")])
def test_bad_reliability_option(option, value, zorba, tmp_path):
    out = tmp_path / "out"
    assert_clean_error(zorba("run", "--out", str(out), option, value), option.lstrip("-"))
    assert not out.exists()


@pytest.mark.parametrize("section,key,value", [("config", "mu", 2e-3), ("reliability", "clip", 5.0)])
def test_hand_edited_header_is_refused(section, key, value, zorba, run_dir):
    header = json.loads((run_dir / "state" / "header.json").read_text())
    edit_header(run_dir, reseal=False, **{section: {**header[section], key: value}})
    before = snapshot(run_dir)
    assert_clean_error(zorba("run", "--resume", str(run_dir)), "damaged or edited")
    assert snapshot(run_dir) == before


def test_header_of_the_unchecksummed_format_is_refused(zorba, run_dir):
    edit_header(run_dir, reseal=False, format="zorba-state/1", sha256=None)
    assert_clean_error(zorba("run", "--resume", str(run_dir)), "before headers were checksummed")


def test_flipped_length_in_a_middle_record_is_damage_not_a_torn_tail(zorba, run_dir):
    log = run_dir / "state" / "log.bin"
    data = bytearray(log.read_bytes())
    data[3] = 0x7F  # record 0's length now runs past the end of the file; records 1.. are intact
    log.write_bytes(bytes(data))
    assert_clean_error(zorba("run", "--resume", str(run_dir)), "record 0 is damaged")
    assert log.read_bytes() == bytes(data)


def test_refused_resume_leaves_a_torn_tail_in_place(zorba, run_dir):
    log = run_dir / "state" / "log.bin"
    with log.open("ab") as f:
        f.write(frame(b"ZL1 a record that never finished")[:-5])
    edit_header(run_dir, base_model_sha256="0" * 64)
    before = snapshot(run_dir)
    assert_clean_error(zorba("run", "--resume", str(run_dir)), "content hash differs")
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("option,value", [("--task", "rte"), ("--model", "facebook/opt-125m"), ("--out", "elsewhere"),
                                          ("--overwrite", None)])
def test_resume_refuses_options_it_would_ignore(option, value, zorba, run_dir):
    before = snapshot(run_dir)
    res = zorba("run", "--resume", str(run_dir), option, *([value] if value else []))
    assert_clean_error(res, option)
    assert snapshot(run_dir) == before


def test_resume_without_rounds_bin_killed_again_still_resumes(run_dir, cfgs):
    (run_dir / "state" / "rounds.bin").unlink()
    pid = os.fork()
    if pid == 0:
        try:
            os.environ["ZORBA_CRASH_AT"] = "round-recorded:1"
            run_job(cfgs[0], run_dir, progress=False, resume=True)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    result = run_job(cfgs[0], run_dir, progress=False, resume=True)
    assert [h["round"] for h in result["history"]] == list(range(cfgs[0].rounds))
    assert result["accuracy"]["initial"] == run_job(cfgs[0], run_dir.parent / "fresh", progress=False)["accuracy"]["initial"]
