"""Flower's deployment engine on loopback: TLS SuperLink + 3 authenticated SuperNodes as separate
processes, one short zorba run, everything stopped by pid. Slow: each ClientApp is a fresh process."""

import os
import shutil

import psutil
import pytest

from zorba.flower.deploy import deploy

pytestmark = pytest.mark.slow


@pytest.mark.skipif(shutil.which("flower-superlink") is None, reason="flwr CLI not installed")
def test_deployment_runs_a_round_over_tls_with_node_auth(tiny_models, data_dir, tmp_path):
    before = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)}
    run_config = {"model": str(tiny_models["opt"]), "rounds": 1, "local-steps": 2, "train-size": 60,
                  "batch-size": 8, "max-len": 32, "data-dir": str(data_dir), "round-timeout": 240.0}
    result = deploy(run_config, clients=3, out=tmp_path / "out", timeout=400)
    assert result["engine"] == "flower-deployment"
    assert result["history"][0]["reported"] == [0, 1, 2]
    assert result["clients_in_sync"] is True
    assert result["final_model_sha256"] != result["base_model_sha256"]
    assert 0 < result["comm"]["uplink_bytes_per_client_round"] < 5000
    peaks = result["memory"]["peak_bytes_per_client"]  # each SuperNode's ClientApp process, self-reported
    assert len(peaks) == 3 and all(100 * 2**20 < p < 8 * 2**30 for p in peaks)
    left = {p.pid for p in psutil.Process(os.getpid()).children(recursive=True)} - before
    assert not left, f"processes left running: {left}"
