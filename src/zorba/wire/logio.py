"""The round log on disk: one JSON object per line, floats written exactly (float32 scalars and
float64 lr round-trip through repr), so any machine can rebuild the weights from base + log."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path

from zorba.errors import UserError
from zorba.wire.protocol import ClientUpdate, LogEntry, StepReport


def entry_to_dict(e: LogEntry) -> dict:
    return asdict(e)


def entry_from_dict(d: dict) -> LogEntry:
    updates = tuple(
        ClientUpdate(
            int(u["client"]), tuple(int(b) for b in u["blocks"]),
            tuple(StepReport(int(s["seed"]), tuple(float(g) for g in s["scalars"])) for s in u["steps"]),
            float(u["weight"]), float(u.get("lr_scale", 1.0)),
        )
        for u in d["updates"]
    )
    if float(d.get("coverage_exponent", 0.0)) != 0.0:  # written by a zorba that could sum covering clients
        raise ValueError("log entry with a coverage exponent: this zorba only averages covering clients")
    return LogEntry(int(d["round"]), float(d["lr"]), int(d["q"]), str(d["dist"]), updates)


def write_log(path: Path, entries: Iterable[LogEntry]) -> None:
    with path.open("w") as f:
        for e in entries:
            f.write(json.dumps(entry_to_dict(e), separators=(",", ":")) + "\n")


def read_log(path: Path) -> list[LogEntry]:
    if not path.is_file():
        raise UserError(f"{path}: no round log here")
    entries = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            entries.append(entry_from_dict(json.loads(line)))
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:{n}: malformed log entry ({type(exc).__name__}: {exc})") from None
        if entries[-1].round != n - 1:
            raise UserError(f"{path}:{n}: entry for round {entries[-1].round}, expected {n - 1}")
    return entries
