"""A ClientApp's device: the loaded model (a Replica), the tokenised data and the partitions, kept in
the process across rounds; and the client's copy of the log, kept in Flower's Context state.

Why both: Flower's simulation runs ClientApps in long-lived Ray actors, so a process cache keeps the
model loaded between rounds; but a node's messages may land on different actors, and the deployment
runtime starts a fresh ClientApp process per message. The client's sync position therefore lives in
its Context (which Flower persists per node and run): the log entries it has received, a few bytes
per step. Like the in-process runner, all clients a process serves share one replica; whichever
client runs replays, from its own log copy, what that replica still lacks, so the weights are
bit-exact however messages are routed and whichever rounds a client missed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord, Context

from zorba.core.data import dirichlet_partition
from zorba.core.models import LoadedModel
from zorba.core.replica import Replica
from zorba.core.scoring import Scorer
from zorba.core.tasks import get_task
from zorba.federation.client import TokenizedData
from zorba.federation.config import RunConfig
from zorba.federation.runner import check_inputs, has_label_head
from zorba.flower.wire import WireError
from zorba.memory.streamload import load_client_replica
from zorba.wire import codec
from zorba.wire.protocol import LogEntry

LOG_RECORD = "zorba.log"


@dataclass
class Device:
    key: str
    cfg: RunConfig
    lm: LoadedModel
    replica: Replica
    scorer: Scorer
    data: TokenizedData
    parts: list[np.ndarray]
    base_digest: str


class LogGap(WireError):
    """The client lacks entries before the first one it was sent; `have` = how many it holds."""

    def __init__(self, have: int, first: int) -> None:
        super().__init__(f"log gap: client holds {have} entries, received entries from {first}")
        self.have = have


_devices: dict[str, Device] = {}  # at most one: a process holds one model, as a real device would


def device_for(cfg: RunConfig, run_id: int) -> Device:
    """This process's device for the run, loading model and data only on first use."""
    key = f"{run_id}:{cfg.model_dump_json()}"
    if key not in _devices:
        _devices.clear()
        _devices[key] = _load_device(key, cfg)
    return _devices[key]


def forget_device() -> None:
    """Drop the cached device, e.g. after a failure left its weights in an unknown state."""
    _devices.clear()


def _load_device(key: str, cfg: RunConfig) -> Device:
    inputs = check_inputs(cfg)
    replica = client_replica(cfg)  # never the whole fp32 model in memory
    lm = replica.lm
    scorer = Scorer(lm, get_task(cfg.task), cfg.max_len)
    data = TokenizedData(scorer.encode(inputs.train), [e.label for e in inputs.train])
    parts = dirichlet_partition(data.labels, cfg.clients, cfg.alpha, cfg.seed)
    digest = replica.digest()  # of the base fp32 weights (the store's), as models.state_digest gives it
    return Device(key, cfg, lm, replica, scorer, data, parts, digest)


def stored_log(context: Context) -> list[bytes]:
    """The encoded log entries this client has received so far (entry i = round i)."""
    if LOG_RECORD not in context.state:
        return []
    return list(context.state[LOG_RECORD]["entries"])


def store_log(context: Context, entries: list[bytes]) -> None:
    context.state[LOG_RECORD] = ConfigRecord({"entries": entries})


def merge_log(stored: list[bytes], new: list[LogEntry] | tuple[LogEntry, ...]) -> list[bytes]:
    """Append newly received entries; an entry received twice (a resend after a timeout) must match."""
    if not new:
        return stored
    first = new[0].round
    if first > len(stored):
        raise LogGap(len(stored), first)
    merged = list(stored)
    for e in new:
        raw = codec.encode_entry(e)
        if e.round < len(merged):
            if merged[e.round] != raw:
                raise WireError(f"log entry {e.round} differs from the copy this client already holds")
        else:
            merged.append(raw)
    return merged


def sync_device(device: Device, log: list[bytes]) -> None:
    """Bring the shared replica to the end of `log`, replaying only what it lacks."""
    if device.replica.cursor > len(log):  # ahead of this client's log: start again from base weights
        _reload_weights(device)
    todo = [codec.decode_entry(raw) for raw in log[device.replica.cursor :]]
    device.replica.sync(todo, first_index=device.replica.cursor)


def client_replica(cfg: RunConfig) -> Replica:
    """The client's replica of the run's model, label head included when the run has one."""
    return load_client_replica(cfg.model, cfg.precision,
                               label_head=get_task(cfg.task).num_labels if has_label_head(cfg) else 0)


def _reload_weights(device: Device) -> None:
    """Back to the base weights: a fresh model, replica and scorer (same as the runner's clients)."""
    device.replica = client_replica(device.cfg)
    device.lm = device.replica.lm
    device.scorer = Scorer(device.lm, get_task(device.cfg.task), device.cfg.max_len)
