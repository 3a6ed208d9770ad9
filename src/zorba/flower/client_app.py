"""The Flower ClientApp: answers the server's hello (load model and data, prove the base weights),
its round plans (catch up, train with zorba.federation.client.run_round, report) and its final sync."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from zorba.federation.client import ClientState, run_round
from zorba.federation.memprobe import process_peak_rss
from zorba.flower import device as dev
from zorba.flower import wire
from zorba.flower.faults import inject, parse_faults
from zorba.flower.settings import config_from_json
from zorba.wire import codec

SETUP_RECORD = "zorba.setup"

app = ClientApp()


class ClientFailure(RuntimeError):
    """What the server is told when a handler fails for a reason other than the protocol."""


def guarded(handler: Callable[[Message, Context], Message]) -> Callable[[Message, Context], Message]:
    """Flower sends a failing handler's exception text to the server. Texts about input files can
    quote them (a TSV's header line, say, of whatever file the run config named), so only zorba's
    protocol errors, which quote nothing, go as they are; any other failure goes as its type alone,
    and its full text stays in this node's own log."""

    @functools.wraps(handler)
    def run(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except (wire.WireError, codec.DecodeError):
            raise
        except Exception as exc:
            print(f"zorba client: {type(exc).__name__}: {exc}", file=sys.stderr)
            raise ClientFailure(f"{type(exc).__name__} on the client (details in its own log)") from None

    return run


def partition_id(context: Context) -> int:
    """The client id: Flower's partition-id (set by the simulation, or `--node-config` on a SuperNode)."""
    if "partition-id" not in context.node_config:
        raise wire.WireError("this SuperNode has no partition-id: start it with --node-config 'partition-id=N'")
    return int(context.node_config["partition-id"])


def _device(context: Context) -> dev.Device:
    setup = context.state[SETUP_RECORD]
    torch.set_num_threads(int(setup["torch-threads"]))
    data_dir = context.node_config.get("data-dir")  # a node's own copy of the data may live elsewhere
    cfg = config_from_json(str(setup["config"]), data_dir=str(data_dir) if data_dir else None)
    # Clients never evaluate; a test file named by the server is not theirs to open.
    return dev.device_for(cfg.model_copy(update={"test_file": None}), context.run_id)


@app.query("hello")
@guarded
def hello(msg: Message, context: Context) -> Message:
    """Load model and data once, and report the partition and the base weights' digest."""
    setup = msg.content[wire.SETUP]
    context.state[SETUP_RECORD] = ConfigRecord(
        {"config": setup["config"], "faults": setup["faults"], "torch-threads": setup["torch-threads"]}
    )
    device = _device(context)
    cid = partition_id(context)
    if not 0 <= cid < device.cfg.clients:
        raise wire.WireError(f"partition-id {cid} is outside 0..{device.cfg.clients - 1}")
    reply = ConfigRecord({"partition-id": cid, "base-sha256": device.base_digest, "examples": len(device.parts[cid])})
    return Message(RecordDict({wire.SETUP: reply}), reply_to=msg)


@app.train("zorba")
@guarded
def train(msg: Message, context: Context) -> Message:
    plan = wire.records_to_plan(msg.content)
    cid = partition_id(context)
    if plan.client != cid:
        raise wire.WireError(f"plan for client {plan.client} reached partition {cid}")
    device = _device(context)
    try:
        log = dev.merge_log(dev.stored_log(context), plan.catch_up)
    except dev.LogGap as gap:
        return need_entries(msg, gap.have)
    try:
        dev.sync_device(device, log)
        inject(parse_faults(str(context.state[SETUP_RECORD]["faults"])), cid, plan.round)
        report = run_round(plan, ClientState(cid, device.parts[cid]), device.replica, device.scorer, device.data,
                           device.cfg.head_pool)
    except BaseException:
        dev.forget_device()  # a failure mid-step may leave perturbed weights behind
        raise
    dev.store_log(context, log)
    return Message(wire.report_to_records(report, len(device.parts[cid]), process_peak_rss()), reply_to=msg)


@app.query("sync")
@guarded
def sync(msg: Message, context: Context) -> Message:
    """Replay the entries the server says this client lacks; answer with the weights' digest."""
    _, entries = wire.records_to_entries(msg.content[wire.SYNC])
    device = _device(context)
    try:
        log = dev.merge_log(dev.stored_log(context), entries)
    except dev.LogGap as gap:
        return need_entries(msg, gap.have)
    dev.sync_device(device, log)
    dev.store_log(context, log)
    reply = ConfigRecord({"cursor": len(log), "sha256": device.replica.digest()})
    return Message(RecordDict({wire.SYNC: reply}), reply_to=msg)


def need_entries(msg: Message, have: int) -> Message:
    """Ask for a resend from entry `have`: this client's log copy is shorter than the server thinks
    (e.g. a timed-out task of an earlier round finished late and stored its older copy)."""
    return Message(RecordDict({wire.GAP: ConfigRecord({"have": have})}), reply_to=msg)
