"""Fast checks of the Flower glue: records round-trip, log merging, fault specs, run-config mapping."""

import subprocess
import sys
from pathlib import Path

import pytest

from zorba.errors import UserError
from zorba.flower import wire
from zorba.flower.device import LogGap, merge_log
from zorba.flower.faults import InjectedCrash, inject, parse_faults
from zorba.flower.settings import split_run_config
from zorba.wire.protocol import ClientUpdate, Hyper, LogEntry, Report, RoundPlan, StepReport, step_seed


def entry(r: int) -> LogEntry:
    return LogEntry(r, 1e-3, 1, "rademacher", (ClientUpdate(0, (1, 2), (StepReport(7 + r, (0.25,)),)),))


def test_plan_and_report_round_trip_through_records():
    plan = RoundPlan(2, 1, (0, 3), 99, Hyper(1e-3, 1e-3), (entry(0), entry(1)))
    assert wire.records_to_plan(wire.plan_to_records(plan)) == plan
    report = Report(2, 1, (StepReport(step_seed(99, 1, 0), (0.5,)),), 0.75)
    content = wire.report_to_records(report, 10)
    assert wire.records_to_report(content, {1: plan}) == report
    assert content[wire.METRICS]["num-examples"] == 10
    assert content[wire.METRICS]["train-loss"] == 0.75
    assert wire.reported_peak(content) is None  # nothing claimed
    assert wire.reported_peak(wire.report_to_records(report, 10, 123_456_789)) == 123_456_789
    content[wire.METRICS]["peak-rss-bytes"] = -5.0
    assert wire.reported_peak(content) is None  # a malformed claim is dropped
    first, entries = wire.records_to_entries(wire.entries_to_records([entry(3), entry(4)], 3))
    assert first == 3 and entries == [entry(3), entry(4)]
    with pytest.raises(wire.WireError):
        wire.records_to_entries(wire.entries_to_records([entry(3)], 2))


def test_merge_log_appends_accepts_resends_and_detects_gaps():
    log = merge_log([], [entry(0), entry(1)])
    assert len(log) == 2
    assert merge_log(log, [entry(1), entry(2)])[:2] == log  # a resend overlapping what it holds
    with pytest.raises(LogGap) as gap:
        merge_log(log, [entry(3)])
    assert gap.value.have == 2
    with pytest.raises(wire.WireError):
        merge_log(log, [LogEntry(1, 5e-3, 1, "rademacher", ())])  # same index, different entry


def test_fault_specs():
    faults = parse_faults("crash:1@0, hang:2@1:0.01")
    with pytest.raises(InjectedCrash):
        inject(faults, 1, 0)
    inject(faults, 1, 1)
    inject(faults, 2, 1)
    for bad in ("crash:1", "boom:1@0", "hang:1@0"):
        with pytest.raises(UserError):
            parse_faults(bad)


def test_run_config_maps_to_run_config_and_rejects_unknown_keys():
    cfg, opts = split_run_config({"local-steps": 3, "train-size": 0, "data-dir": "", "round-timeout": 5.0})
    assert cfg.local_steps == 3 and cfg.train_size is None and cfg.data_dir is None and opts.round_timeout == 5.0
    with pytest.raises(UserError):
        split_run_config({"local-stepz": 3})


def test_flower_sim_cli_rejects_bad_options_with_exit_2():
    proc = subprocess.run([sys.executable, "-m", "zorba", "flower-sim", "--faults", "crash:x@y"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "fault" in proc.stderr


def test_flower_app_defaults_are_run_configs_defaults():
    """One source of defaults: every training key of [tool.flwr.app.config] mirrors RunConfig's default
    (Flower needs the keys declared in pyproject.toml; this keeps the two from drifting apart)."""
    import tomllib

    from zorba.federation.config import RunConfig
    from zorba.flower.settings import _FLOWER_KEYS, FlowerOptions, _none_if_empty

    app = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    for key, value in app["config"].items():
        name = key.replace("-", "_")
        if key in _FLOWER_KEYS:  # the Flower-only keys mirror FlowerOptions, which `zorba flower-sim` reads too
            assert value == getattr(FlowerOptions, name), key
            continue
        assert _none_if_empty(name, value) == RunConfig.model_fields[name].default, key
    assert _FLOWER_KEYS <= set(app["config"])
