"""The ServerApp's work: zorba.federation.server.Server driven over Flower's Grid (Message API).

Per round: sample participants (runner.participants, so both engines pick the same clients), let the
Server plan, send each plan as a `train.zorba` message, feed the replies that arrive within the round
timeout to Server.receive, close the round. A client that crashed, timed out or sent a rejected
report is recorded as failed, and its delivery cursor is rolled back so its next plan carries the
entries it never confirmed (it catches up by replay)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from zorba.core.models import LoadedModel, state_digest
from zorba.core.replica import Replica
from zorba.core.scoring import Scorer
from zorba.core.tasks import get_task
from zorba.errors import UserError
from zorba.federation.config import RunConfig
from zorba.federation.runner import (
    check_inputs,
    client_memory_model,
    client_profiles,
    head_steps,
    load_run_model,
    make_planner,
    make_step_rule,
    participants,
)
from zorba.federation.server import ReportRejected, Server
from zorba.flower import wire
from zorba.flower.settings import FlowerOptions, config_to_json
from zorba.memory.memory_model import MemoryModel
from zorba.memory.profiles import ClientProfile, blocks_within_budget
from zorba.wire import codec
from zorba.wire.protocol import Hyper


@dataclass
class FlowerRun:
    cfg: RunConfig
    opts: FlowerOptions
    lm: LoadedModel
    server: Server
    base_digest: str
    block_counts: list[int]
    node_of: dict[int, int] = field(default_factory=dict)  # client (partition id) -> Flower node id
    history: list[dict] = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)
    setup_bytes: dict = field(default_factory=dict)
    final_sync: dict = field(default_factory=dict)
    seconds: float = 0.0
    profiles: list[ClientProfile] = field(default_factory=list)  # each client's class, budget and speed
    memory_model: MemoryModel | None = None  # what the planner predicts client memory with


def build_run(cfg: RunConfig, opts: FlowerOptions) -> FlowerRun:
    """The same Server the in-process runner builds: planner, hyper-parameters, seed, replica."""
    check_inputs(cfg)
    lm = load_run_model(cfg)
    mem = client_memory_model(cfg, lm)
    profiles = client_profiles(cfg, mem)
    hyper = Hyper(cfg.lr, cfg.mu, cfg.q, cfg.local_steps, cfg.batch_size, cfg.dist)
    server = Server(make_planner(cfg, lm, profiles, mem), hyper, cfg.seed, Replica(lm),
                    step_rule=make_step_rule(cfg, lm), head=head_steps(cfg, lm))
    return FlowerRun(cfg, opts, lm, server, state_digest(lm.model), blocks_within_budget(profiles, mem),
                     profiles=profiles, memory_model=mem)


def wait_for_nodes(grid: Grid, count: int, seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes
        if time.monotonic() > deadline:
            raise UserError(f"only {len(nodes)} of {count} SuperNodes connected within {seconds:.0f} s")
        time.sleep(0.5)


def hello(grid: Grid, run: FlowerRun, nodes: list[int]) -> None:
    """Every node loads model and data; map partition ids to nodes; refuse differing base weights."""
    setup = ConfigRecord({
        "config": config_to_json(run.cfg), "faults": run.opts.faults, "torch-threads": run.opts.torch_threads,
    })
    msgs = [Message(RecordDict({wire.SETUP: setup}), dst_node_id=n, message_type="query.hello") for n in nodes]
    run.setup_bytes = {"hello_downlink_bytes_per_node": wire.message_bytes(msgs[0])["total"]}
    bad = {}
    for reply in grid.send_and_receive(msgs, timeout=run.opts.node_wait):
        if reply.has_error():
            raise UserError(f"node {reply.metadata.src_node_id} failed to load: {error_line(reply.error.reason)}")
        try:
            cid, digest, examples = _hello_answer(reply, run.cfg.clients)
        except wire.WireError as exc:
            bad[reply.metadata.src_node_id] = str(exc)
            continue
        if digest != run.base_digest:
            raise UserError(f"client {cid}: its base model differs from the server's (replay would diverge)")
        if cid in run.node_of:
            raise UserError(f"two SuperNodes claim partition-id {cid}")
        run.node_of[cid] = reply.metadata.src_node_id
        # A client's weight in the block averages, as in-process (runner.example_weights). Self-reported,
        # as FedAvg's num_examples is: screening bounds each client's step, not its weight.
        run.server.weights[cid] = float(examples)
    if bad and len(run.node_of) < run.cfg.clients:
        node, why = next(iter(bad.items()))
        raise UserError(f"{len(bad)} SuperNode(s) sent a malformed hello (node {node}: {why})")
    missing = sorted(set(range(run.cfg.clients)) - set(run.node_of))
    if missing:
        # Seen in practice: Ray runs simulated ClientApps at nice 15, so other full-priority jobs on a
        # saturated machine can starve them past the wait (docs/flower.md).
        raise UserError(f"no SuperNode answered for clients {missing} (partition-id 0..{run.cfg.clients - 1}) "
                        f"within {run.opts.node_wait:.0f} s; on a busy machine ClientApps may be starved of CPU")


def _hello_answer(reply: Message, clients: int) -> tuple[int, str, int]:
    """(partition id, base digest, examples) of a hello reply; WireError when any is malformed."""
    answer = reply.content[wire.SETUP] if wire.SETUP in reply.content else None
    if not isinstance(answer, ConfigRecord):
        raise wire.WireError(f"no {wire.SETUP} record")
    cid, digest, examples = (answer[k] if k in answer else None for k in ("partition-id", "base-sha256", "examples"))
    if not (_is_int(cid) and 0 <= cid < clients):
        raise wire.WireError(f"partition-id {cid!r} is not an integer in 0..{clients - 1}")
    if not (_is_int(examples) and examples > 0) or not isinstance(digest, str):
        raise wire.WireError("examples or base-sha256 missing or malformed")
    return cid, digest, examples


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def exchange(
    grid: Grid, msgs: dict[int, Message], node_of: dict[int, int], timeout: float, resend: Callable[[int, int], Message]
) -> tuple[dict[int, Message], dict[int, list[Message]]]:
    """Send, collect replies until `timeout`; a client that asks for entries it lacks (wire.GAP) is
    sent `resend(client, have)` once, within the same deadline. Returns the final replies per client
    and every message sent per client (for byte counts)."""
    deadline = time.monotonic() + timeout
    sent = {c: [m] for c, m in msgs.items()}
    client_of = {node_of[c]: c for c in msgs}
    replies: dict[int, Message] = {}
    pending, retried = dict(msgs), set()
    while pending and time.monotonic() < deadline:
        again = {}
        for reply in grid.send_and_receive(list(pending.values()), timeout=max(deadline - time.monotonic(), 0.1)):
            c = client_of.get(reply.metadata.src_node_id)  # who answers is the node, not what it claims
            if c is None or c not in pending:
                continue  # a node that was not asked, or one that already answered
            try:
                have = wire.gap_in(reply)
            except wire.WireError:
                have = None  # kept as its reply: _accept says why it is refused
            if have is not None and c not in retried:
                retried.add(c)
                again[c] = resend(c, have)
                sent[c].append(again[c])
            else:
                replies[c] = reply
        pending = again
    return replies, sent


def run_round(grid: Grid, run: FlowerRun) -> dict:
    server, started = run.server, time.perf_counter()
    clients = participants(run.cfg, server.round)
    delivered_before = {c: server.cursors.get(c, 0) for c in clients}
    plans = server.make_plans(clients)

    def plan_message(c: int, have: int | None = None) -> Message:
        plan = plans[c] if have is None else replace(plans[c], catch_up=tuple(server.log[have:]))
        return Message(wire.plan_to_records(plan), dst_node_id=run.node_of[c], message_type="train.zorba")

    msgs = {c: plan_message(c) for c in plans}
    replies, sent = exchange(grid, msgs, run.node_of, run.opts.round_timeout, plan_message)
    up, losses, failed, peaks = {}, [], {}, {}
    for c, reply in sorted(replies.items()):
        reason = _accept(server, reply, c)
        if reason:
            failed[c] = reason
            continue
        up[c] = wire.message_bytes(reply)
        losses.append(server.reports[c].loss)
        peaks[c] = wire.reported_peak(reply.content)
    for c in plans:
        if c not in up and c not in failed:
            failed[c] = f"no reply within {run.opts.round_timeout:g} s"
    entry = server.close_round()
    for c in failed:  # never confirmed: resend those entries with its next plan
        server.undeliver(c, delivered_before[c])
    down = {c: _sum_bytes(wire.message_bytes(m) for m in ms) for c, ms in sent.items()}
    record = _round_record(entry.round, plans, up, down, losses, failed, time.perf_counter() - started)
    record["client_peak_rss_bytes"] = {str(c): p for c, p in peaks.items() if p is not None}
    return record


def _sum_bytes(sizes) -> dict[str, int]:
    total = {"total": 0, "content": 0}
    for s in sizes:
        total = {k: total[k] + s[k] for k in total}
    return total


def error_line(reason: str, limit: int = 200) -> str:
    """The last line of an error reply, clipped: engines (Ray) put their own wrapping first and the
    ClientApp's message last."""
    lines = [line.strip() for line in reason.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else reason)[-limit:]


def _accept(server: Server, reply: Message, client: int) -> str:
    """'' if the server accepted the reply's report, else why not. `client` is the one whose node
    sent the reply: a report claiming another client is refused, whatever it carries."""
    if reply.has_error():
        return f"ClientApp error: {error_line(reply.error.reason)}"
    if reply.metadata.message_type != "train.zorba":
        return f"answered a {reply.metadata.message_type!r} message to a train.zorba one"
    try:
        if wire.gap_in(reply) is not None:
            return "log gap persisted after a resend"
        report = wire.records_to_report(reply.content, server.plans)
        if report.client != client:
            return f"rejected: client {client}'s node sent a report for client {report.client}"
        server.receive(report)
    except (wire.WireError, codec.DecodeError, ReportRejected) as exc:
        return f"rejected: {exc}"
    return ""


def _round_record(rnd, plans, up, down, losses, failed, seconds) -> dict:
    ok = sorted(up)
    return {
        "round": rnd,
        "train_loss": float(np.mean(losses)) if losses else float("nan"),
        "clients": len(plans),
        "reported": ok,
        "failed": {str(c): why for c, why in sorted(failed.items())},
        "blocks": {str(c): list(p.blocks) for c, p in plans.items()},
        "catch_up_entries": {str(c): len(p.catch_up) for c, p in plans.items()},
        "uplink_bytes_per_client": float(np.mean([up[c]["total"] for c in ok])) if ok else 0.0,
        "downlink_bytes_per_client": float(np.mean([d["total"] for d in down.values()])),
        "bytes": {str(c): {"down": down[c]["total"], "up": up[c]["total"] if c in up else None,
                           "down_content": down[c]["content"], "up_content": up[c]["content"] if c in up else None}
                  for c in plans},
        "seconds": seconds,
    }


def final_sync(grid: Grid, run: FlowerRun) -> None:
    """Send each client what it lacks of the log; every device must then hold the server's weights."""
    server, want = run.server, run.server.replica.digest()

    def sync_message(c: int, have: int | None = None) -> Message:
        start = server.cursors.get(c, 0) if have is None else have
        record = wire.entries_to_records(server.log[start:], start)
        return Message(RecordDict({wire.SYNC: record}), dst_node_id=run.node_of[c], message_type="query.sync")

    msgs = {c: sync_message(c) for c in run.node_of}
    replies, sent = exchange(grid, msgs, run.node_of, run.opts.round_timeout, sync_message)
    digests = {c: _sync_digest(r) for c, r in replies.items()}
    run.final_sync = {
        "clients_in_sync": all(digests.get(c) == want for c in run.node_of),
        "digests_match": {str(c): digests.get(c) == want for c in sorted(run.node_of)},
        "downlink_bytes_per_client": float(np.mean([_sum_bytes(wire.message_bytes(m) for m in ms)["total"]
                                                    for ms in sent.values()])),
    }


def _sync_digest(reply: Message) -> str | None:
    """The weights' digest a sync reply carries; None for an error or a malformed reply."""
    if reply.has_error() or wire.SYNC not in reply.content:
        return None
    record = reply.content[wire.SYNC]
    digest = record["sha256"] if isinstance(record, ConfigRecord) and "sha256" in record else None
    return digest if isinstance(digest, str) else None


def train(grid: Grid, run: FlowerRun) -> FlowerRun:
    """The whole federated run; `run` collects history, accuracy and bytes for result.json."""
    started = time.perf_counter()
    cfg = run.cfg
    scorer = Scorer(run.lm, get_task(cfg.task), cfg.max_len)
    dev_inputs = check_inputs(cfg).dev
    dev = (scorer.encode(dev_inputs), [e.label for e in dev_inputs])
    hello(grid, run, wait_for_nodes(grid, cfg.clients, run.opts.node_wait))
    run.accuracy["initial"] = scorer.accuracy(*dev)
    for t in range(cfg.rounds):
        record = run_round(grid, run)
        if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
            record["dev_accuracy"] = scorer.accuracy(*dev)
        run.history.append(record)
    run.accuracy["final"] = run.history[-1]["dev_accuracy"]
    final_sync(grid, run)
    run.seconds = time.perf_counter() - started
    return run
