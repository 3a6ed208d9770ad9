"""A Flower run's result.json (same layout as `zorba run`'s, plus the Flower message sizes beside
FedAvg's weight exchange) and the other outputs, published all at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from zorba.federation.memprobe import memory_section
from zorba.federation.outdir import build_dir_beside, replace_dir
from zorba.federation.results import versions, write_outputs
from zorba.flower.coordinator import FlowerRun


def build_result(run: FlowerRun, engine: str) -> dict:
    cfg, server = run.cfg, run.server
    n_params = sum(b.numel for b in run.lm.blocks)
    ups = [b["up"] for h in run.history for b in h["bytes"].values() if b["up"] is not None]
    downs = [b["down"] for h in run.history for b in h["bytes"].values()]
    fedavg = 4 * n_params
    return {
        "method": cfg.method,
        "engine": engine,
        "task": cfg.task,
        "model": cfg.model,
        "config": cfg.model_dump(mode="json"),
        "flower_options": vars(run.opts),
        "versions": versions(),
        "seeds": {"run": cfg.seed, "partition": cfg.seed, "note": "every stream derives from the run seed"},
        "base_model_sha256": run.base_digest,
        "final_model_sha256": server.replica.digest(),
        "clients_in_sync": run.final_sync.get("clients_in_sync"),
        "final_sync": run.final_sync,
        "blocks": [{"name": b.name, "numel": b.numel} for b in run.lm.blocks],
        "client_block_counts": run.block_counts,
        "accuracy": run.accuracy,
        "test_file_accuracy": None,
        "failures": {str(h["round"]): h["failed"] for h in run.history if h["failed"]},
        "comm": {
            "how": "serialised Flower objects of each train message (Message + RecordDict + records), "
                   "as pushed to the SuperLink / SuperNode object store",
            "uplink_bytes_per_client_round": float(np.mean(ups)) if ups else 0.0,
            "downlink_bytes_per_client_round": float(np.mean(downs)) if downs else 0.0,
            "uplink_bytes_total": int(sum(ups)),
            "downlink_bytes_total": int(sum(downs)),
            "fedavg_bytes_per_client_round": fedavg,
            "fedavg_uplink_bytes_per_client_round": fedavg,
            "fedavg_downlink_bytes_per_client_round": fedavg,
            "setup": run.setup_bytes,
        },
        "memory": client_memory(run, engine),
        "seconds": run.seconds,
        "history": run.history,
    }


def client_memory(run: FlowerRun, engine: str) -> dict:
    """Simulation: measured as `zorba run` does, on this machine (the simulated clients share worker
    processes, so their own peaks would mix). Deployment: the peak each client's process reported
    with its reports (a probe here would measure the server's machine)."""
    if engine == "flower-deployment":
        reported = reported_peaks(run.history, run.cfg.clients)
        how = ("peak RSS (VmHWM) each client's own process reported with its round reports: its whole life "
               "on its own machine (model and data loaded, every round it trained)" if reported
               else "not measured (no client reported its peak)")
        return memory_section(run.cfg, run.lm.blocks, run.history, run.profiles, run.memory_model, False, how,
                              reported)
    measured = run.cfg.measure_memory
    how = ("peak RSS of a fresh process running each client's largest planned block set (as `zorba run`)"
           if measured else "not measured (--no-measure-memory)")
    return memory_section(run.cfg, run.lm.blocks, run.history, run.profiles, run.memory_model, measured, how)


def reported_peaks(history: list[dict], clients: int) -> list[int] | None:
    """Each client's largest reported peak over the rounds (0: never reported); None if none did."""
    peaks = [0] * clients
    for record in history:
        for c, peak in record.get("client_peak_rss_bytes", {}).items():
            if 0 <= int(c) < clients:
                peaks[int(c)] = max(peaks[int(c)], int(peak))
    return peaks if any(peaks) else None


def write_run(run: FlowerRun, result: dict, out: Path) -> None:
    """Written beside `out`, then renamed into place; an old `out` goes only if it is a zorba run
    (checked again here: the folder may have changed while the run trained)."""
    tmp = build_dir_beside(out)
    try:
        write_outputs(tmp, result, run.server.replica, run.server.log)
        replace_dir(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
