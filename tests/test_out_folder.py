"""The output folder: --overwrite replaces only a zorba run (its marker, nothing else), a run that
replaces another is built beside it and renamed in, and odd --out paths are one line and exit 2
before the model is loaded."""

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import assert_clean_error

from zorba.errors import UserError
from zorba.federation.outdir import MARKER

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def small(tiny_models, tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("data")
    (root / "sst2").mkdir()
    for name, n in (("train", 40), ("dev", 8)):
        lines = (data_dir / "sst2" / f"{name}.tsv").read_text().splitlines()[: n + 1]
        (root / "sst2" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    return ["--model", str(tiny_models["bert"]), "--clients", "2", "--rounds", "1", "--local-steps", "1",
            "--batch-size", "4", "--max-len", "16", "--data-dir", str(root), "--no-measure-memory"]


def tree(folder):
    folder = Path(folder)
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_refuses_a_folder_holding_other_files(zorba, small, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "sub").mkdir()
    before = tree(tmp_path)
    assert_clean_error(zorba("run", *small, "--out", str(tmp_path), "--overwrite"), "not touching it")
    assert tree(tmp_path) == before


def test_overwrite_refuses_the_data_folder(zorba, small):
    data = small[small.index("--data-dir") + 1]
    before = tree(data)
    assert_clean_error(zorba("run", *small, "--out", data, "--overwrite"), "zorba run")
    assert tree(data) == before


def test_overwrite_refuses_a_run_with_a_foreign_file_added(zorba, small, tmp_path):
    out = tmp_path / "run"
    assert zorba("run", *small, "--out", str(out)).returncode == 0
    (out / "my-notes.md").write_text("keep me")
    assert_clean_error(zorba("run", *small, "--out", str(out), "--overwrite"), "not touching it")
    assert (out / "my-notes.md").read_text() == "keep me"


def test_overwrite_replaces_a_run_whole_and_a_failed_one_leaves_it_intact(zorba, small, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert zorba("run", *small, "--out", str(out)).returncode == 0
    assert (out / MARKER).is_file()
    first = tree(out)
    monkeypatch.setattr("zorba.experiments.job.build_result", lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        zorba("run", *small, "--out", str(out), "--overwrite", "--seed", "7")
    assert tree(out) == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # nothing left beside it
    monkeypatch.undo()
    assert zorba("run", *small, "--out", str(out), "--overwrite", "--seed", "7").returncode == 0
    assert json.loads((out / "result.json").read_text())["config"]["seed"] == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("kind", ["file", "under-file", "dev-null", "symlink", "proc"])
def test_odd_out_paths_are_refused_before_the_model_loads(kind, zorba, small, tmp_path):
    (tmp_path / "f").write_text("x")
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "link")
    out = {"file": tmp_path / "f", "under-file": tmp_path / "f" / "run", "dev-null": "/dev/null",
           "symlink": tmp_path / "link", "proc": "/proc/zorba-run"}[kind]
    args = [a if a != small[1] else "/no/such/model" for a in small]  # a model load would fail differently
    res = zorba("run", *args, "--out", str(out), "--overwrite")
    assert_clean_error(res, str(out))
    assert (tmp_path / "f").read_text() == "x" and list((tmp_path / "real").iterdir()) == []


def test_flower_server_refuses_a_foreign_out_folder_before_training(tmp_path, small):
    from zorba.federation.config import make_config
    from zorba.flower.server_app import serve
    from zorba.flower.settings import FlowerOptions

    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(UserError, match="not empty"):
        serve(None, make_config(), FlowerOptions(out=str(tmp_path)), engine="flower-deployment")
    with pytest.raises(UserError, match="not touching it"):
        serve(None, make_config(), FlowerOptions(out=str(tmp_path), overwrite=True), engine="flower-deployment")
    assert (tmp_path / "thesis.tex").read_text() == "years of work"
