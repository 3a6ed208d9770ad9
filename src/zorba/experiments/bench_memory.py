"""Client memory of a bench row, measured: which clients a method can use at the federation's budgets.

Budgets are the default device classes' (zorba.memory.profiles: classes that may train 1, 3/4, 1/2 and 1/4
of the trainable memory under the planner's memory model), in process bytes: a first-principles
model's budget plus the runtime the probe measured before the model loaded (zorba.memory.profiles.
in_process_bytes); a calibrated model's budgets are process bytes already. A client's need is the
peak of a fresh process that loads the model and runs one round of the method (its local steps), loading included
(`process_peak_rss_bytes` of zorba.methods.probe, or of zorba.federation.memprobe for zorba's clients).

A method whose client holds the same state every round needs one probe; in its equal-memory row a
client takes part only if its budget holds that peak. Zorba's rows are measured per client, on the
largest block set their planner gave each client in the row's tune_seed run.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path

from zorba.federation.config import RunConfig, find_data_dir
from zorba.federation.durable import write_atomic

HOW = "peak RSS of a fresh client process from its start (model loading included), one round of local steps"


def slug(label: str) -> str:
    """A row's folder name: lower case, runs of anything but [a-z0-9._-] turned into one '-'."""
    return re.sub(r"[^a-z0-9._-]+", "-", label.lower()).strip("-")


def memory_path(out: Path, task: str, row_slug: str) -> Path:
    return out / "memory" / task / f"{row_slug}.json"


def _federation(cfg: RunConfig, planned: bool = False):
    """(model blocks, client profiles, memory model) of the federation `cfg` describes: a row that
    holds the same state every round sees the model as the baselines load it; a `planned` zorba row
    sees its run's model (with the label head of the `head` planner, whose blocks its plans name)."""
    update = {"task": "sst2", "seed": 0, "lr": 1e-4, "method": ""}
    return _federation_of(cfg.model_copy(update=update if planned else {**update, "planner": "all"}))


@cache  # one model load per federation, not per row: rows differ only in what `_federation` resets
def _federation_of(cfg: RunConfig):
    from zorba.federation.memprobe import load_probe_model
    from zorba.federation.runner import client_memory_model, client_profiles, load_run_model

    lm = load_run_model(cfg, load_probe_model(cfg.model))
    mem = client_memory_model(cfg, lm)
    return lm.blocks, client_profiles(cfg, mem), mem


def probe_client(name: str, options: dict, cfg: RunConfig, n_blocks: int) -> dict:
    """One fresh-process probe of the method's client (for zorba: every block active)."""
    from zorba.methods import method_class

    cls, defaults = method_class(name)
    if cls.family == "zorba":
        from zorba.federation.memprobe import MemoryProbe, measure

        return measure(MemoryProbe(cfg.model, cfg.task, tuple(range(n_blocks)), cfg.batch_size, cfg.max_len, cfg.local_steps,
                                   data_dir=str(find_data_dir(cfg)), precision=cfg.precision))
    from zorba.methods.probe import measure_client

    return measure_client(name, {**defaults, **options}, cfg)


def budget_section(cfg: RunConfig, peak: int, runtime: int) -> dict:
    """Every client's class and budget beside the method's one measured peak, in process bytes, and
    whether the peak is within each budget."""
    from zorba.memory.profiles import budget_report, in_process_bytes

    blocks, profiles, mem = _federation(cfg)
    section = budget_report(profiles, mem, {}, calibrated=bool(cfg.memory_model))
    section["peak_bytes_per_client"] = [peak] * cfg.clients
    section["how"] = HOW
    return in_process_bytes(section, runtime)


def measure_row(bench, row, task: str, out: Path, say: Callable[[str], None]) -> dict:
    """The row's memory record (measured once; the file is reused on resume). An equal-memory row
    shares its method's probe and may use the clients whose budget holds the peak."""

    path = memory_path(out, task, row.slug)
    if path.is_file():
        return json.loads(path.read_text())
    cfg = bench.run_config(row, task)
    plain = memory_path(out, task, slug(row.entry.display))
    start = time.perf_counter()
    if row.equal_memory and plain.is_file():
        probe = json.loads(plain.read_text())["probe"]
    else:
        say(f"measuring client memory of {row.entry.display} on {task} (fresh process)")
        probe = probe_client(row.entry.name, row.entry.options, cfg, len(_federation(cfg)[0]))
    section = budget_section(cfg, probe["process_peak_rss_bytes"], probe["runtime_rss_bytes"])
    fits = [c for c, ok in enumerate(section["within_budget"]) if ok]
    record = {"label": row.label, "method": row.entry.name, "task": task, "equal_memory": row.equal_memory,
              "clients": cfg.clients, "clients_used": fits if row.equal_memory else list(range(cfg.clients)),
              "clients_within_budget": fits, "memory": section, "probe": probe,
              "seconds": time.perf_counter() - start}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=1).encode())
    return record


def measure_planned(bench, row, task: str, result: dict, out: Path, say: Callable[[str], None]) -> dict:
    """A zorba row's per-client peaks: a probe per distinct largest block set its planner gave a
    client in `result` (the row's tune_seed run at the chosen lr), against each client's budget."""
    from zorba.federation.config import make_config
    from zorba.federation.memprobe import memory_section

    say(f"measuring client memory of {row.label} on {task} (a fresh process per planned block set)")
    start = time.perf_counter()
    cfg = make_config(**{**result["config"], "data_dir": str(find_data_dir(make_config(**result["config"])))})
    blocks, profiles, mem = _federation(cfg, planned=True)
    section = memory_section(cfg, blocks, result["history"], profiles, mem, True, HOW + ", on its largest planned block set")
    fits = [c for c, ok in enumerate(section["within_budget"] or []) if ok]
    record = {"label": row.label, "method": row.entry.name, "task": task, "equal_memory": False,
              "clients": cfg.clients, "clients_used": result["clients_used"], "clients_within_budget": fits,
              "memory": section, "probe": None, "seconds": time.perf_counter() - start}
    path = memory_path(out, task, row.slug)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(record, indent=1).encode())
    return record
