"""Robustness against broken or hostile clients: report limits, scalar clipping, robust per-block
aggregation. Everything here decides what goes into the log entry, and the log entry records exactly
what was applied (clipped scalars, per-block weights), so replay stays bit-exact.

Clipping: a scalar g is clipped to +-B with B = clip * median(recent |g| scales). The scale of a round
is the median |g| over its logged scalars; the current round joins the window with the median |g| of
its own accepted reports, so even round 0 has a bound, and fewer than half of a round's scalars
being hostile cannot move it much. B is rounded to float32: the wire and the log carry float32.

Robust aggregation per block:
- `screened` (the default): per block, a client whose mean |g| exceeds `outlier` (3) x the low median
  of the block's clients says nothing about that block this round; the rest are averaged, each scaled
  down to at most that median (as `median` does). An honest scalar is a slope along a random
  direction, so honest magnitudes on one block stay within a small factor of each other, while an
  attacker must be large to matter: 10x-scaled or (clipped) 1e30 scalars are mostly dropped outright,
  and one that slips under the limit (its own honest slope was small) counts at most as much as a
  typical honest client. The low median keeps the reference honest while fewer than half of a block's
  clients are hostile, even with two clients. Its limit: a sign-flipped honest-size report is averaged
  in and cancels one honest client.
- `mean`: the plain per-block average (clipping only).
- `trimmed`: per block, among the clients that trained it, the floor(trim * n) with the largest
  mean |g| say nothing about that block this round (an update with fewer blocks).
- `median`: per block, a client's scalars on that block are scaled down so that its mean |g| is at
  most the median over the block's clients. Different blocks of one client then carry different
  scalars, which the log expresses as several ClientUpdates of that client on disjoint block sets
  (LogEntry.coefficients is keyed by (client, block), so this needs no new field).
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from zorba.wire.protocol import ClientUpdate, LogEntry, Report, StepReport, to_f32

AGGREGATES = ("screened", "mean", "trimmed", "median")
MAX_METRICS = 32
F32_MAX = 3.4028234663852886e38


@dataclass(frozen=True)
class RobustPolicy:
    clip: float = 10.0  # multiple of the running median |g|; 0 turns clipping off
    aggregate: str = "screened"
    trim: float = 0.1  # fraction of a block's clients dropped by `trimmed`
    outlier: float = 3.0  # `screened` drops a client above this multiple of the block's low median |g|
    window: int = 10  # rounds in the running median


def report_problem(report: Report) -> str | None:
    """Why a decoded report is unusable beyond the protocol checks (None if it is fine)."""
    if not math.isfinite(report.loss):
        return "non-finite loss"
    if len(report.metrics) > MAX_METRICS:
        return f"{len(report.metrics)} metrics, at most {MAX_METRICS}"
    if not all(math.isfinite(v) for v in report.metrics.values()):
        return "non-finite metric"
    return None


def _magnitude(steps: tuple[StepReport, ...]) -> float:
    values = [abs(g) for s in steps for g in s.scalars]
    return sum(values) / len(values) if values else 0.0


def entry_scale(entry: LogEntry) -> float | None:
    """Median |g| over the scalars a round logged (None for an empty round)."""
    values = [abs(g) for u in entry.updates for s in u.steps for g in s.scalars]
    return statistics.median(values) if values else None


def observed_scalars(entry: LogEntry) -> dict[int, list[float]]:
    """Per client, the scalars of its first update in the entry: what planners learn from. A pure
    function of the log, so a resumed server teaches its planner exactly what the first one saw."""
    out: dict[int, list[float]] = {}
    for u in entry.updates:
        out.setdefault(u.client, [g for s in u.steps for g in s.scalars])
    return out


class RobustAggregator:
    """Turns one round's accepted reports into the log entry's updates; remembers recent scales."""

    def __init__(self, policy: RobustPolicy | None = None) -> None:
        self.policy = policy or RobustPolicy()
        if self.policy.aggregate not in AGGREGATES:
            raise ValueError(f"aggregate must be one of {AGGREGATES}")
        self.scales: deque[float] = deque(maxlen=self.policy.window)
        self.last_bound: float | None = None

    def observe(self, entry: LogEntry) -> None:
        scale = entry_scale(entry)
        if scale is not None:
            self.scales.append(scale)

    def bound(self, reports: Mapping[int, Report]) -> float | None:
        if self.policy.clip <= 0:
            return None
        current = [abs(g) for r in reports.values() for s in r.steps for g in s.scalars]
        window = list(self.scales) + ([statistics.median_low(current)] if current else [])
        if not window:
            return None
        return min(to_f32(self.policy.clip * statistics.median(window)), F32_MAX)

    def updates(
        self, blocks: Mapping[int, tuple[int, ...]], reports: Mapping[int, Report], weights: Mapping[int, float],
        lr_scales: Mapping[int, float] | None = None,
    ) -> tuple[ClientUpdate, ...]:
        """`lr_scales`: each client's step factor s. Clients are compared on s x mean |g|, the size of the
        step they ask for. Raw |g| grows with the energy of the client's block set (E g^2 = e_S), while
        under the default step rule (s = (D / d_S)^1/2, docs/theory.md A2) s |g| ~ (D e_S / d_S)^1/2
        depends only on the set's energy density: honest clients on sets of different sizes compare."""
        bound = self.last_bound = self.bound(reports)
        steps = {c: _clip(r.steps, bound) for c, r in sorted(reports.items())}
        mags = {c: (lr_scales or {}).get(c, 1.0) * _magnitude(s) for c, s in steps.items()}
        if self.policy.aggregate == "trimmed":
            return self._trimmed(blocks, steps, weights, mags)
        if self.policy.aggregate == "median":
            return self._median(blocks, steps, weights, mags)
        if self.policy.aggregate == "screened":
            return self._screened(blocks, steps, weights, mags)
        return tuple(ClientUpdate(c, blocks[c], s, weights.get(c, 1.0)) for c, s in steps.items())

    def _screened(self, blocks, steps, weights, mags) -> tuple[ClientUpdate, ...]:
        kept = {c: list(bs) for c, bs in blocks.items() if c in steps}
        for b, clients in _coverage(blocks, steps).items():
            limit = self.policy.outlier * statistics.median_low(mags[c] for c in clients)
            for c in clients:
                if limit > 0 and mags[c] > limit:  # an all-zero block has nothing to screen
                    kept[c].remove(b)
        kept = {c: tuple(bs) for c, bs in kept.items() if bs}
        return self._median(kept, {c: steps[c] for c in kept}, weights, mags)

    def _trimmed(self, blocks, steps, weights, mags) -> tuple[ClientUpdate, ...]:
        dropped: set[tuple[int, int]] = set()
        for b, clients in _coverage(blocks, steps).items():
            k = math.floor(self.policy.trim * len(clients))
            ranked = sorted(clients, key=lambda c: (mags[c], c))
            dropped |= {(c, b) for c in ranked[len(ranked) - k :]} if k else set()
        return _without(blocks, steps, weights, dropped)

    def _median(self, blocks, steps, weights, mags) -> tuple[ClientUpdate, ...]:
        factor: dict[tuple[int, int], float] = {}
        for b, clients in _coverage(blocks, steps).items():
            med = statistics.median_low(mags[c] for c in clients)
            for c in clients:
                factor[(c, b)] = min(1.0, med / mags[c]) if mags[c] > 0 else 1.0
        out = []
        for c, s in steps.items():
            groups: dict[float, list[int]] = {}
            for b in blocks[c]:
                groups.setdefault(factor[(c, b)], []).append(b)
            for f, bs in sorted(groups.items(), key=lambda kv: kv[1][0]):
                scaled = s if f == 1.0 else tuple(StepReport(x.seed, tuple(to_f32(g * f) for g in x.scalars)) for x in s)
                out.append(ClientUpdate(c, tuple(bs), scaled, weights.get(c, 1.0)))
        return tuple(out)


def _without(blocks, steps, weights, dropped: set[tuple[int, int]]) -> tuple[ClientUpdate, ...]:
    """Each client's update on the blocks it was not dropped from (a client dropped from all: none)."""
    out = []
    for c, s in steps.items():
        kept = tuple(b for b in blocks[c] if (c, b) not in dropped)
        if kept:
            out.append(ClientUpdate(c, kept, s, weights.get(c, 1.0)))
    return tuple(out)


def _clip(steps: tuple[StepReport, ...], bound: float | None) -> tuple[StepReport, ...]:
    if bound is None:
        return steps
    return tuple(StepReport(s.seed, tuple(max(-bound, min(bound, g)) for g in s.scalars)) for s in steps)


def _coverage(blocks: Mapping[int, tuple[int, ...]], steps: Mapping[int, object]) -> dict[int, list[int]]:
    cover: dict[int, list[int]] = {}
    for c in steps:
        for b in blocks[c]:
            cover.setdefault(b, []).append(c)
    return cover
