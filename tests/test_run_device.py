"""`--device`: validated up front, recorded in result.json, and device="cpu" is the old behaviour."""

import json

import pytest
import torch

from zorba.errors import UserError
from zorba.federation.config import make_config, resolve_device
from zorba.federation.runner import Runner, check_inputs


@pytest.mark.parametrize("bad", ["gpu", "cuda:", "cuda:x", "CPU", "cuda0", ""])
def test_a_misspelt_device_is_one_user_error_line(bad):
    with pytest.raises(UserError, match="device") as exc:
        make_config(device=bad)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("good", ["cpu", "cuda", "cuda:0", "cuda:3", "auto"])
def test_well_spelt_devices_are_accepted_by_the_config(good):
    # The config checks spelling only: a saved config must load on a machine without that GPU.
    assert make_config(device=good).device == good


def test_auto_resolves_to_what_the_machine_has():
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_a_user_error():
    with pytest.raises(UserError, match="no CUDA GPU"):
        resolve_device("cuda")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cli_cuda_without_a_gpu_fails_before_writing(zorba, tmp_path, data_dir):
    out = tmp_path / "out"
    proc = zorba("run", "--device", "cuda", "--out", str(out), "--rounds", "1", "--no-measure-memory",
                 "--data-dir", str(data_dir))
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "no CUDA GPU" in proc.stderr
    assert not out.exists()


def _tiny_run(tiny_models, data_dir, **extra):
    cfg = make_config(model=str(tiny_models["bert"]), clients=3, rounds=2, local_steps=2, train_size=48,
                      planner="feasible-round-robin", data_dir=str(data_dir), lr=1e-3, batch_size=8, max_len=24,
                      measure_memory=False, eval_every=2, **extra)
    return Runner(cfg, check_inputs(cfg)).run()


def test_device_cpu_is_the_default_behaviour_bit_for_bit(tiny_models, data_dir):
    default = _tiny_run(tiny_models, data_dir)
    explicit = _tiny_run(tiny_models, data_dir, device="cpu")
    assert default.torch_device == explicit.torch_device == "cpu"
    assert explicit.server.replica.digest() == default.server.replica.digest()
    assert explicit.device.digest() == explicit.server.replica.digest()
    assert [h["train_loss"] for h in explicit.history] == [h["train_loss"] for h in default.history]


def test_result_json_records_the_device(zorba, tiny_models, data_dir, tmp_path):
    out = tmp_path / "out"
    proc = zorba("run", "--model", str(tiny_models["bert"]), "--clients", "2", "--rounds", "1", "--local-steps", "1",
                 "--train-size", "32", "--max-len", "24", "--data-dir", str(data_dir), "--out", str(out),
                 "--no-measure-memory", "--device", "auto")
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["config"]["device"] == "auto"
    assert result["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
