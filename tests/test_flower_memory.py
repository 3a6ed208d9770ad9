"""Flower runs report client memory like `zorba run`: one fresh-process probe per distinct largest
planned block set, taken from the round history the engines record."""

from types import SimpleNamespace

import numpy as np

from zorba.federation import memprobe
from zorba.federation.config import make_config
from zorba.memory.memory_model import MemoryModel
from zorba.memory.profiles import ClientProfile


def test_planned_client_peaks_probes_each_clients_largest_set_once(monkeypatch):
    probed = []

    def fake_measure(probe, timeout=600):
        probed.append(probe.blocks)
        return {"process_peak_rss_bytes": 1000 + 10 * sum(probe.blocks), "runtime_rss_bytes": 500}

    monkeypatch.setattr(memprobe, "measure", fake_measure)
    cfg = make_config(clients=3, measure_memory=True)
    blocks = [SimpleNamespace(numel=n) for n in (100, 10, 10, 10)]
    history = [{"blocks": {"0": [1], "1": [0], "2": [2, 3]}}, {"blocks": {"0": [1, 2, 3], "1": [3]}}]
    peaks = memprobe.planned_client_peaks(cfg, blocks, history)
    # client 0: (1, 2, 3) beats (1,); client 1 keeps (0,) (100 elements > 10); client 2 only had (2, 3)
    assert sorted(probed) == [(0,), (1, 2, 3), (2, 3)]
    assert peaks == [1000 + 60, 1000, 1000 + 50]
    history.append({"blocks": {"2": [1, 2, 3]}})
    probed.clear()
    assert memprobe.planned_client_peaks(cfg, blocks, history)[2] == 1060
    assert sorted(probed) == [(0,), (1, 2, 3)]  # one probe per distinct set


def test_simulation_results_carry_measured_memory_deployment_results_do_not(monkeypatch):
    from zorba.flower import outputs

    monkeypatch.setattr(memprobe, "measure", lambda probe, timeout=600: {"process_peak_rss_bytes": 5, "runtime_rss_bytes": 3})
    blocks = [SimpleNamespace(numel=1), SimpleNamespace(numel=1)]
    mem = MemoryModel(base=100.0, delta=np.array([1.0, 2.0]))
    run = SimpleNamespace(cfg=make_config(clients=2), lm=SimpleNamespace(blocks=blocks),
                          history=[{"blocks": {"0": [0], "1": [1]}}], memory_model=mem,
                          profiles=[ClientProfile("a", 101.0), ClientProfile("b", 102.0)])
    assert outputs.client_memory(run, "flower-simulation")["peak_bytes_per_client"] == [5, 5]
    deployed = outputs.client_memory(run, "flower-deployment")
    assert deployed["peak_bytes_per_client"] is None  # no client reported its peak
    # the server knows budgets and predictions whether or not it can measure the clients
    assert deployed["budget_bytes_per_client"] == [101.0, 102.0]
    assert deployed["predicted_bytes_per_client"] == [101.0, 102.0]
    run.cfg = make_config(clients=2, measure_memory=False)
    assert outputs.client_memory(run, "flower-simulation")["peak_bytes_per_client"] is None


def test_deployment_results_carry_the_peaks_clients_reported(monkeypatch):
    from zorba.flower import outputs

    monkeypatch.setattr(memprobe, "measure", lambda probe, timeout=600: 1 / 0)  # never probes here
    blocks = [SimpleNamespace(numel=1), SimpleNamespace(numel=1)]
    mem = MemoryModel(base=100.0, delta=np.array([1.0, 2.0]))
    history = [{"blocks": {"0": [0], "1": [1], "2": [0]}, "client_peak_rss_bytes": {"0": 90, "1": 130}},
               {"blocks": {"0": [0, 1]}, "client_peak_rss_bytes": {"0": 120, "7": 5}}]
    run = SimpleNamespace(cfg=make_config(clients=3, memory_model="mm.json"), lm=SimpleNamespace(blocks=blocks),
                          history=history, memory_model=mem,
                          profiles=[ClientProfile("a", 125.0), ClientProfile("b", 125.0), ClientProfile("c", 125.0)])
    section = outputs.client_memory(run, "flower-deployment")
    assert section["peak_bytes_per_client"] == [120, 130, 0]  # each client's largest; 2 never reported
    assert section["within_budget"] == [True, False, None]
    assert "reported" in section["how"]


def test_process_peak_rss_is_this_process_peak():
    import resource

    peak = memprobe.process_peak_rss()
    assert peak >= resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 * 0.99 > 0
