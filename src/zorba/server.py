"""Server logic: plan each round, validate reports, aggregate per block into the log, keep a replica."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from zorba.plans import BlockPlanner
from zorba.protocol import ClientUpdate, Hyper, LogEntry, Report, RoundPlan, round_seed, step_seed
from zorba.replica import Replica


class ReportRejected(ValueError):
    """A report that does not match what the server asked for; the round goes on without it."""


class Server:
    def __init__(
        self,
        planner: BlockPlanner,
        hyper: Hyper,
        seed: int,
        replica: Replica | None = None,
        weights: Mapping[int, float] | None = None,
    ) -> None:
        self.planner, self.hyper, self.seed = planner, hyper, seed
        self.replica = replica
        self.weights = dict(weights or {})
        self.log: list[LogEntry] = []
        self.cursors: dict[int, int] = {}  # client -> number of log entries it has been sent
        self._plans: dict[int, RoundPlan] = {}
        self._reports: dict[int, Report] = {}

    @property
    def round(self) -> int:
        return len(self.log)

    def make_plans(self, clients: Sequence[int]) -> dict[int, RoundPlan]:
        """Plans for the next round; each carries the log entries its client has not been sent."""
        t = self.round
        blocks = self.planner.plan(t, list(clients))
        rseed = round_seed(self.seed, t)
        self._plans, self._reports = {}, {}
        for c in clients:
            catch_up = tuple(self.log[self.cursors.get(c, 0) :])
            self._plans[c] = RoundPlan(t, c, tuple(blocks[c]), rseed, self.hyper, catch_up)
            self.cursors[c] = len(self.log)
        return dict(self._plans)

    def receive(self, report: Report) -> None:
        """Accept a report only if it answers this round's plan: right client, round, seeds and sizes."""
        plan = self._plans.get(report.client)
        if plan is None or report.round != plan.round:
            raise ReportRejected(f"client {report.client}: no plan for round {report.round}")
        if report.client in self._reports:
            raise ReportRejected(f"client {report.client}: duplicate report for round {report.round}")
        if len(report.steps) != plan.hyper.local_steps:
            raise ReportRejected(f"client {report.client}: {len(report.steps)} steps, expected {plan.hyper.local_steps}")
        for k, step in enumerate(report.steps):
            if step.seed != step_seed(plan.round_seed, report.client, k):
                raise ReportRejected(f"client {report.client}: step {k} carries a seed it was not assigned")
            if len(step.scalars) != plan.hyper.q or not all(math.isfinite(g) for g in step.scalars):
                raise ReportRejected(f"client {report.client}: step {k} scalars malformed or non-finite")
        self._reports[report.client] = report

    def close_round(self) -> LogEntry:
        """Aggregate the accepted reports into the round's log entry (possibly empty) and apply it."""
        updates = tuple(
            ClientUpdate(c, self._plans[c].blocks, r.steps, self.weights.get(c, 1.0))
            for c, r in sorted(self._reports.items())
        )
        entry = LogEntry(self.round, self.hyper.lr, self.hyper.q, self.hyper.dist, updates)
        self.log.append(entry)
        if self.replica is not None:
            self.replica.apply(entry)
        self.planner.observe(entry.round, {c: [g for s in r.steps for g in s.scalars] for c, r in self._reports.items()})
        self._plans, self._reports = {}, {}
        return entry

    @property
    def reports(self) -> dict[int, Report]:
        return dict(self._reports)
