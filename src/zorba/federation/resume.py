"""Crash-safe runs: a durable state folder (DIR/state/) written as the run goes, `zorba run --resume
DIR` to continue a killed run, and a publish step that never removes that folder's state.

Why resume is exact: every random choice derives from the run seed and the round index, and the
global weights are base + replay of the log. A resumed server re-plans each logged round (same
planner calls, same present clients) and commits the logged entries, so its planner, cursors, robust
state and replica are those of the server that died; the rounds after the log are then computed
exactly as the first process would have computed them. A round that was not logged is simply done
again. Only per-round metrics of a round logged but not yet recorded (a crash between the two
writes) are rebuilt from the log, marked "recovered", with the clients' mean loss unknown (NaN).
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from zorba.errors import UserError
from zorba.federation.config import RunConfig
from zorba.federation.durable import RunStore, crash_point, fsync_dir
from zorba.federation.outdir import write_marker
from zorba.federation.reliability import Reliability
from zorba.federation.runner import Runner, RunState
from zorba.wire import codec
from zorba.wire.protocol import LogEntry, Report, RoundPlan

STATE = "state"
RESULT = "result.json"


def zorba_version() -> str:
    try:
        return metadata.version("zorba")
    except metadata.PackageNotFoundError:
        return "unknown"


def run_header(cfg: RunConfig, reliability: Reliability, base_digest: str) -> dict:
    return {
        "zorba": zorba_version(),
        "model": cfg.model,
        "base_model_sha256": base_digest,
        "config": cfg.model_dump(mode="json"),
        "reliability": reliability.model_dump(mode="json"),
    }


def resume_options(run_dir: Path, given: dict | None = None) -> tuple[RunConfig, Reliability]:
    """The config and reliability options of the run in `run_dir`; options given on the command line
    must agree with them (a resumed run cannot change course and stay reproducible)."""
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder to resume")
    if (run_dir / RESULT).is_file():
        raise UserError(f"{run_dir}: this run already finished ({RESULT} is there); nothing to resume")
    header = RunStore.open(run_dir / STATE).header
    if header.get("zorba") != zorba_version():
        raise UserError(f"{run_dir}: written by zorba {header.get('zorba')!r}, this is {zorba_version()!r}; "
                        "replay is only promised within one version")
    try:
        cfg = RunConfig(**header["config"])
        rel = Reliability(**header["reliability"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(f"{run_dir / STATE}: header holds no valid run config ({type(exc).__name__})") from None
    stored = {**cfg.model_dump(mode="json"), **rel.model_dump(mode="json")}
    for key, value in (given or {}).items():
        if value is not None and key in stored and stored[key] != value:
            raise UserError(f"--{key.replace('_', '-')} {value!r} differs from the run being resumed ({stored[key]!r})")
    return cfg, rel


class DurableRun:
    """A Runner bound to a state folder: created (new run) or restored from (resume), then every
    round's record is appended after the server has durably logged the round's entry."""

    def __init__(self, runner: Runner, out: Path, base_digest: str, reliability: Reliability, resume: bool) -> None:
        self.runner, self.out = runner, out
        folder = out / STATE
        if resume:
            self.store = RunStore.open(folder)
            self._check_header(base_digest)
            restore(runner, self.store)
        else:
            out.mkdir(parents=True, exist_ok=True)
            write_marker(out)
            self.store = RunStore.create(folder, run_header(runner.cfg, reliability, base_digest))
        runner.state.server.store = self.store

    def _check_header(self, base_digest: str) -> None:
        h = self.store.header
        if h.get("base_model_sha256") != base_digest:
            raise UserError(f"{self.out}: base model {h.get('model')!r} is not the one this run started from "
                            "(content hash differs)")
        if len(self.store.entries) > self.runner.cfg.rounds:
            raise UserError(f"{self.out}: log has {len(self.store.entries)} rounds, the run has {self.runner.cfg.rounds}")

    def run(self, on_round: Callable[[dict], None] | None = None) -> RunState:
        s = self.runner.state
        if "initial" not in s.accuracy:
            initial = self.runner.evaluate(0)
            self.store.append_record(_initial_record(s, initial))
            _set_initial(s, initial)
        crash_point("run-started")

        def record(rec: dict) -> None:
            self.store.append_record(rec)
            crash_point("round-recorded")
            if on_round:
                on_round(rec)

        return self.runner.run(record)


def _initial_record(s: RunState, initial: dict) -> dict:
    """What rounds.bin keeps of round 0: the accuracies and the zero-shot dev predictions, so that a
    resumed run can still test its final model against zero-shot."""
    return {"initial": initial, "initial_dev_predictions": s.initial_dev_predictions}


def _set_initial(s: RunState, initial: dict) -> None:
    s.accuracy["initial"] = initial["dev_accuracy"]
    if "test_file_accuracy" in initial:
        s.test_accuracy["initial"] = initial["test_file_accuracy"]


def restore(runner: Runner, store: RunStore) -> None:
    """Bring a fresh runner to the end of a durable log: server, client device, history. Nothing on
    disk changes until every logged round has been checked against this run's plans."""
    s = runner.state
    initial = next((r["initial"] for r in store.records if "initial" in r), None)
    if initial is None:  # rounds.bin lost: measure at the base weights, before any replay
        initial = runner.evaluate(0)
    else:
        preds = next((r.get("initial_dev_predictions") for r in store.records if "initial" in r), None)
        s.initial_dev_predictions, s.dev_labels = list(preds or []), list(runner.dev[1])
    plans: dict[int, RoundPlan] = {}
    for entry in store.entries:
        plans = s.server.make_plans(runner.present_clients(entry.round))
        try:
            s.server.replay(entry)
        except ValueError as exc:
            raise UserError(f"{store.folder}: the log does not belong to this run's config ({exc})") from None
    store.repair()
    if not any("initial" in r for r in store.records):
        store.append_record(_initial_record(s, initial))  # first, so that a later resume finds it
    s.device.sync(s.server.log)
    _set_initial(s, initial)
    for rec in [r for r in store.records if "round" in r][: len(store.entries)]:
        _add_history(s, rec)
    for entry in store.entries[len(s.history) :]:
        rec = recovered_record(entry, plans if entry is store.entries[-1] else {})
        if entry is store.entries[-1] and _eval_due(runner.cfg, entry.round):
            rec.update({k: v for k, v in runner.evaluate(entry.round + 1).items() if k != "round"})
        store.append_record(rec)
        _add_history(s, rec)


def _eval_due(cfg: RunConfig, t: int) -> bool:
    return (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds


def _add_history(s: RunState, rec: dict) -> None:
    s.history.append(rec)
    s.bytes_up.append(int(rec["uplink_bytes_per_client"]))
    s.bytes_down.append(int(rec["downlink_bytes_per_client"]))


def recovered_record(entry: LogEntry, plans: dict[int, RoundPlan]) -> dict:
    """A round's record rebuilt from its log entry (its clients' losses were not logged)."""
    answered = sorted({u.client for u in entry.updates})
    steps = {u.client: u.steps for u in entry.updates}
    up = sum(len(codec.encode_report(Report(entry.round, c, steps[c], 0.0))) for c in answered)
    down = sum(len(codec.encode_plan(p)) for p in plans.values())
    n = max(len(plans), 1)
    return {
        "round": entry.round,
        "train_loss": math.nan,
        "clients": len(plans),
        "answered": len(answered),
        "blocks": {str(c): list(p.blocks) for c, p in plans.items()},
        "uplink_bytes_per_client": up / n,
        "downlink_bytes_per_client": down / n,
        "seconds": 0.0,
        "recovered": True,
    }


def publish_beside_state(out: Path, write: Callable[[Path], None]) -> None:
    """Write the outputs into a staging folder inside `out`, then move each into place with
    result.json last: its presence means the run is complete, and the state folder is never removed,
    so a crash at any point leaves either a resumable run or a finished one."""
    staging = out / f".staging-{os.getpid()}"
    for old in out.glob(".staging-*"):
        shutil.rmtree(old, ignore_errors=True)
    staging.mkdir(parents=True)
    write(staging)
    _fsync_tree(staging)
    names = sorted((p.name for p in staging.iterdir()), key=lambda n: n == RESULT)
    for name in names:
        target = out / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        crash_point("publish")
        os.replace(staging / name, target)
    staging.rmdir()
    fsync_dir(out)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    fsync_dir(folder)
