"""Server logic: plan each round, validate reports, aggregate per block into the log, keep a replica.

A round counts once its log entry is durable: `close_round` writes the entry to the store (if any)
before the server's replica applies it or any client can be sent it. `replay` rebuilds a server
from a durable log (resume): it runs the same planning calls and commits the logged entries, so
planner, cursors, robust state and replica end where the first server was."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace
from types import MappingProxyType
from typing import Protocol

from zorba.core.replica import Replica
from zorba.federation.durable import crash_point
from zorba.federation.robust import RobustAggregator, RobustPolicy, observed_scalars, report_problem
from zorba.planner.plans import BlockPlanner
from zorba.planner.steprule import StepRule
from zorba.wire.protocol import Hyper, LogEntry, Report, RoundPlan, round_seed, step_seed


class ReportRejected(ValueError):
    """A report that does not match what the server asked for; the round goes on without it."""


class EntrySink(Protocol):
    def append_entry(self, entry: LogEntry) -> None: ...


class Server:
    def __init__(
        self,
        planner: BlockPlanner,
        hyper: Hyper,
        seed: int,
        replica: Replica | None = None,
        weights: Mapping[int, float] | None = None,
        *,
        store: EntrySink | None = None,
        robust: RobustPolicy | None = None,
        step_rule: StepRule | None = None,
        head: tuple[int, int] | None = None,
    ) -> None:
        self.planner, self.hyper, self.seed = planner, hyper, seed
        self.step_rule = step_rule  # None: every client steps with hyper.lr
        # (label-head block, local steps of a client that trains it alone: its steps read cached
        # features, federation/client.py); None: every client takes hyper.local_steps
        self.head = head
        self.replica = replica
        self.weights = dict(weights or {})
        self.store = store  # durable log; None = in memory only
        self.aggregator = RobustAggregator(robust)
        self.log: list[LogEntry] = []
        self.cursors: dict[int, int] = {}  # client -> number of log entries it has been sent
        self._plans: dict[int, RoundPlan] = {}
        self._reports: dict[int, Report] = {}
        self._scales: dict[int, float] = {}  # this round's step factor per client

    @property
    def round(self) -> int:
        return len(self.log)

    def undeliver(self, client: int, cursor: int) -> None:
        """A client never confirmed its plan (crash, timeout): resend the log from `cursor` next time."""
        self.cursors[client] = min(self.cursors.get(client, 0), cursor)

    def make_plans(self, clients: Sequence[int]) -> dict[int, RoundPlan]:
        """Plans for the next round for the clients present; each carries the entries it lacks. A
        planner may leave a present client out (planner `all-if-fits`): it gets no plan, like a dropout."""
        t = self.round
        blocks = self.planner.plan(t, list(clients))
        clients = [c for c in clients if c in blocks]
        rseed = round_seed(self.seed, t)
        self._plans, self._reports = {}, {}
        self._scales = {c: self.step_rule.scale(blocks[c]) if self.step_rule else 1.0 for c in clients}
        for c in clients:
            catch_up = tuple(self.log[self.cursors.get(c, 0) :])
            hyper = replace(self.hyper, lr=self.hyper.lr * self._scales[c]) if self._scales[c] != 1.0 else self.hyper
            if self.head is not None and tuple(blocks[c]) == (self.head[0],):
                hyper = replace(hyper, local_steps=self.head[1])
            self._plans[c] = RoundPlan(t, c, tuple(blocks[c]), rseed, hyper, catch_up)
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
        problem = report_problem(report)
        if problem:
            raise ReportRejected(f"client {report.client}: {problem}")
        self._reports[report.client] = report
        crash_point("report-received")

    def close_round(self) -> LogEntry:
        """Aggregate the accepted reports into the round's entry (possibly empty), log it durably, apply it."""
        blocks = {c: p.blocks for c, p in self._plans.items()}
        updates = tuple(replace(u, lr_scale=self._scales[u.client])
                        for u in self.aggregator.updates(blocks, self._reports, self.weights, self._scales))
        entry = LogEntry(self.round, self.hyper.lr, self.hyper.q, self.hyper.dist, updates)
        if self.store is not None:
            self.store.append_entry(entry)
        crash_point("round-logged")
        self._commit(entry)
        return entry

    def replay(self, entry: LogEntry) -> None:
        """Commit an entry from a durable log after `make_plans` re-planned its round (resume)."""
        if entry.round != self.round:
            raise ValueError(f"entry for round {entry.round}, server is at round {self.round}")
        for u in entry.updates:
            plan = self._plans.get(u.client)
            if plan is None or not set(u.blocks) <= set(plan.blocks):
                raise ValueError(f"round {entry.round}: client {u.client} logged blocks it was not planned")
            if [s.seed for s in u.steps] != [step_seed(plan.round_seed, u.client, k) for k in range(len(u.steps))]:
                raise ValueError(f"round {entry.round}: client {u.client} logged seeds it was not assigned")
            if u.lr_scale != self._scales[u.client]:
                raise ValueError(f"round {entry.round}: client {u.client} logged a step factor it was not planned")
        self._commit(entry)

    def _commit(self, entry: LogEntry) -> None:
        self.log.append(entry)
        if self.replica is not None:
            self.replica.apply(entry)
        self.aggregator.observe(entry)
        self.planner.observe(entry.round, observed_scalars(entry))
        self._plans, self._reports = {}, {}

    @property
    def plans(self) -> Mapping[int, RoundPlan]:
        """This round's plans by client: what a report on the wire is decoded against."""
        return MappingProxyType(self._plans)

    @property
    def reports(self) -> dict[int, Report]:
        return dict(self._reports)

