"""Bad input: one clear line on stderr, exit code 2, no traceback, nothing written."""

import subprocess
import sys

import pytest


def test_entry_point_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "zorba", "run", "--clients", "0"], capture_output=True, text=True)
    assert_clean_error(proc, "clients")


def assert_clean_error(proc, *fragments):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], lines[0]


@pytest.fixture
def bad_data(tmp_path, data_dir):
    root = tmp_path / "data"
    (root / "sst2").mkdir(parents=True)
    (root / "sst2" / "dev.tsv").write_text((data_dir / "sst2" / "dev.tsv").read_text())
    return root


@pytest.fixture
def run(zorba, tmp_path):
    return lambda *extra: zorba("run", "--out", str(tmp_path / "out"), "--rounds", "1", "--no-measure-memory", *extra)



def test_missing_train_file(tmp_path, bad_data, run):
    assert_clean_error(run("--data-dir", str(bad_data)), "train.tsv")
    assert not (tmp_path / "out").exists()


def test_wrong_column(tmp_path, bad_data, run):
    (bad_data / "sst2" / "train.tsv").write_text("label\tsentance\n1\tgood\n")
    assert_clean_error(run("--data-dir", str(bad_data)), "missing column", "train.tsv")
    assert not (tmp_path / "out").exists()


def test_malformed_label(bad_data, run):
    (bad_data / "sst2" / "train.tsv").write_text("label\tsentence\n1\tgood\npositive\tbad\n")
    assert_clean_error(run("--data-dir", str(bad_data)), "train.tsv:3", "bad label")


def test_empty_file(bad_data, run):
    (bad_data / "sst2" / "train.tsv").write_text("")
    assert_clean_error(run("--data-dir", str(bad_data)), "empty")


def test_missing_test_file(tmp_path, data_dir, run):
    assert_clean_error(run("--data-dir", str(data_dir), "--test-file", str(tmp_path / "nope.tsv")), "nope.tsv")


def test_empty_client_partition(bad_data, run):
    (bad_data / "sst2" / "train.tsv").write_text("label\tsentence\n1\tgood\n0\tbad\n1\tfine\n")
    assert_clean_error(run("--data-dir", str(bad_data), "--clients", "5"), "clients")


def test_unknown_model(tmp_path, data_dir, run):
    assert_clean_error(run("--data-dir", str(data_dir), "--model", str(tmp_path / "no-such-model")), "no-such-model")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("option,value,field", [("--clients", "0", "clients"), ("--lr", "-1", "lr"),
                                                ("--planner", "magic", "planner"), ("--task", "mnli", "task"),
                                                ("--participation", "1.5", "participation"),
                                                ("--precision", "int4", "precision")])
def test_out_of_range_option(option, value, field, run):
    assert_clean_error(run(option, value), field)


def test_unknown_option_and_bad_type(zorba):
    assert_clean_error(zorba("run", "--bogus", "1"), "bogus")
    assert_clean_error(zorba("run", "--rounds", "many"), "rounds")


def test_a_memory_cap_for_a_planner_that_takes_none_is_refused(run):
    """The cap is the zorba planner's epsilon constraint: any other planner would ignore it."""
    assert_clean_error(run("--planner", "fill", "--memory-cap-mib", "900"), "memory_cap_mib", "fill")
    assert_clean_error(run("--memory-cap-mib", "900", "--planner", "all"), "memory_cap_mib", "all")


def test_existing_output_folder_is_not_overwritten(tmp_path, data_dir, run):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert_clean_error(run("--data-dir", str(data_dir)), "exists")
    assert (out / "keep.txt").read_text() == "x"


def test_verify_on_a_non_run_folder(tmp_path, zorba):
    assert_clean_error(zorba("verify", str(tmp_path)), "result.json")


def test_options_take_run_configs_defaults():
    """Every command's option named after a RunConfig field defaults to RunConfig's value (or to None,
    when the command must tell an option left out from one given, as `run --resume` does)."""
    import typer

    from zorba.cli.app import app
    from zorba.federation.config import RunConfig

    checked = 0
    for name, command in typer.main.get_command(app).commands.items():
        for param in command.params:
            field = RunConfig.model_fields.get(param.name)
            if field is not None and param.default is not None:
                assert param.default == field.default, (name, param.name)
                checked += 1
    assert checked >= 10  # plan's and profile-memory's options, run's --measure-memory
