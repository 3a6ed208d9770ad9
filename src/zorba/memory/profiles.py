"""Client profiles: each client's memory budget and relative speed (TOML file or a default set).

A TOML file lists device classes; classes with `count` take that many clients, the rest are
assigned cyclically:

    [[profile]]
    name = "phone"
    memory_mib = 700     # budget in the planner's memory model's units (see below)
    speed = 0.4          # relative local-step throughput
    count = 2

A budget is in the units of the memory model the planner uses: with the default first-principles
model, the bytes of the client's tensors (weights, state, activations, scratch), without the Python /
torch runtime; with a calibrated model (`zorba profile-memory`), the whole process's peak RSS. The
report (`in_process_bytes`) states both budgets and predictions in process bytes, the measured
runtime added, beside the measured peaks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zorba.errors import UserError, read_toml
from zorba.memory.memory_model import MemoryModel

MIB = float(1 << 20)

DEFAULT_CLASSES = (("workstation", 1.0, 1.0), ("laptop", 0.75, 0.8), ("phone", 0.5, 0.6), ("iot", 0.25, 0.4))


@dataclass(frozen=True)
class ClientProfile:
    name: str
    memory_bytes: float
    speed: float = 1.0


def default_profiles(num_clients: int, mem: MemoryModel, fractions: Sequence[float] | None = None) -> list[ClientProfile]:
    """Device classes whose budgets let them train a fraction of the model's trainable memory:
    budget = fixed + f * sum(delta), f in (1, 3/4, 1/2, 1/4) by default, cycling over clients."""
    classes = DEFAULT_CLASSES
    if fractions is not None and tuple(fractions) != tuple(c[1] for c in DEFAULT_CLASSES):
        classes = tuple((f"class{i}", f, DEFAULT_CLASSES[i % 4][2]) for i, f in enumerate(fractions))
    fixed, full = float(mem.fixed(1)[0]), float(mem.delta.sum())
    # A hair above the exact sum so float rounding never makes the class's own plan infeasible.
    return [
        ClientProfile(name, (fixed + frac * full) * (1 + 1e-9), speed)
        for name, frac, speed in (classes[n % len(classes)] for n in range(num_clients))
    ]


def load_profiles(path: str | Path, num_clients: int) -> list[ClientProfile]:
    path = Path(path)
    data = read_toml(path, "profile file")
    entries = data.get("profile")
    if not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: expected one or more [[profile]] tables")
    classes = [_parse_class(path, i, e) for i, e in enumerate(entries)]
    return _assign(path, classes, num_clients)


def _parse_class(path: Path, i: int, e: object) -> tuple[ClientProfile, int | None]:
    if not isinstance(e, dict):
        raise UserError(f"{path}: profile {i} is not a table")
    unknown = set(e) - {"name", "memory_mib", "speed", "count"}
    if unknown:
        raise UserError(f"{path}: profile {i} has unknown keys {sorted(unknown)}")
    mem, speed, count = e.get("memory_mib"), e.get("speed", 1.0), e.get("count")
    if not isinstance(mem, int | float) or isinstance(mem, bool) or not (math.isfinite(mem) and mem > 0):
        raise UserError(f"{path}: profile {i}: memory_mib must be a positive number")
    if not isinstance(speed, int | float) or isinstance(speed, bool) or not (math.isfinite(speed) and speed > 0):
        raise UserError(f"{path}: profile {i}: speed must be a positive number")
    if count is not None and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        raise UserError(f"{path}: profile {i}: count must be a non-negative integer")
    return ClientProfile(str(e.get("name", f"class{i}")), float(mem) * MIB, float(speed)), count


def _assign(path: Path, classes: list[tuple[ClientProfile, int | None]], n: int) -> list[ClientProfile]:
    counted = sum(c or 0 for _, c in classes)  # checked before any list is built from the counts
    cyclic = [p for p, c in classes if c is None]
    if counted > n or (counted < n and not cyclic):
        raise UserError(f"{path}: profile counts give {counted} clients, the run has {n}")
    fixed = [p for p, c in classes for _ in range(c or 0)]
    return fixed + [cyclic[i % len(cyclic)] for i in range(n - len(fixed))] if cyclic else fixed


def budgets(profiles: Sequence[ClientProfile]) -> np.ndarray:
    return np.array([p.memory_bytes for p in profiles], dtype=float)


def blocks_within_budget(profiles: Sequence[ClientProfile], mem: MemoryModel) -> list[int]:
    """Per client, how many blocks of average size its budget holds (at least one; result.json's
    `client_block_counts`); a budget below the smallest block's cost is refused here, before any run."""
    spare = budgets(profiles) - mem.fixed(len(profiles))
    counts = np.floor(spare / mem.delta.mean()).astype(int).clip(1, mem.n_blocks)
    for n, s in enumerate(spare):
        if s < mem.delta.min():
            need = mem.fixed(1)[0] + mem.delta.min()
            raise UserError(
                f"client {n} ({profiles[n].name}): budget {profiles[n].memory_bytes / MIB:.1f} MiB < "
                f"{need / MIB:.1f} MiB needed to train even the smallest block"
            )
    return [int(k) for k in counts]


def budget_report(
    profiles: Sequence[ClientProfile], mem: MemoryModel, largest: Mapping[int, Sequence[int]], calibrated: bool
) -> dict:
    """What result.json says of each client's memory: its device class and budget, and the memory
    model's prediction for the largest block set it was planned (0 for a client never planned). Only
    a calibrated model (`zorba profile-memory`) predicts a process's measured peak; the first-principles
    one counts tensors, not the Python and torch runtime, so its numbers sit below any measurement."""
    A = np.zeros((len(profiles), mem.n_blocks))
    for c, blocks in largest.items():
        A[c, list(blocks)] = 1.0
    predicted = mem.client_memory(A)
    return {
        "profile_per_client": [p.name for p in profiles],
        "budget_bytes_per_client": [float(b) for b in budgets(profiles)],
        "predicted_bytes_per_client": [float(predicted[c]) if c in largest else 0.0 for c in range(len(profiles))],
        "memory_model": "calibrated (zorba profile-memory): measured bytes" if calibrated
        else "first principles: tensors only, without the Python / torch runtime",
        "predicted_over_budget_clients": over_budget(profiles, mem, largest),
    }


def over_budget(profiles: Sequence[ClientProfile], mem: MemoryModel, planned: Mapping[int, Sequence[int]]) -> list[int]:
    """Clients whose planned block set the memory model predicts above their budget (both in the
    model's units): what the budget-blind planner `all` can produce."""
    if not planned:
        return []
    ids = sorted(planned)
    A = np.zeros((len(ids), mem.n_blocks))
    for row, c in enumerate(ids):
        A[row, list(planned[c])] = 1.0
    limit = budgets([profiles[c] for c in ids])
    predicted = mem.subset(ids).client_memory(A)
    return [c for c, m, b in zip(ids, predicted, limit, strict=True) if m > b * (1 + 1e-9)]


def in_process_bytes(report: dict, runtime: int | None) -> dict:
    """The budget report in the units of the measured peaks (a process's RSS): a first-principles
    model's budgets and predictions plus the measured `runtime` (RSS before the model loads); a
    calibrated model's are already process bytes. Then `within_budget`: per client, measured peak <=
    budget (None for a client never planned); None where no peak or no runtime was measured."""
    calibrated = report.get("memory_model", "").startswith("calibrated")
    out = dict(report, runtime_bytes=runtime, budget_units="process bytes" if calibrated or runtime else "model bytes")
    if not calibrated and runtime:
        for key in ("budget_bytes_per_client", "predicted_bytes_per_client"):
            out[key] = [float(b) + runtime if b else 0.0 for b in report[key]]
        out["memory_model"] += f"; reported with the measured runtime ({runtime / MIB:.0f} MiB) added"
    peaks = report.get("peak_bytes_per_client")
    out["within_budget"] = None if not peaks or out["budget_units"] != "process bytes" else \
        [None if m == 0 else bool(m <= b) for m, b in zip(peaks, out["budget_bytes_per_client"], strict=True)]
    return out
