"""In-process runner: one server and N simulated clients in one process, deterministic.

All simulated clients share one device replica (they run one after another, as on a single
machine), so memory does not grow with the number of clients: a client is its id, its data indices
and its sync cursor. Messages still go through the binary codec, so byte counts are the real ones.

`cfg.device` is where the clients train (their replica and scorer). The server's replica and the
evaluation scorer stay on the CPU: they hold the exact global weights, as a server would."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zorba.core.data import check_partition, dirichlet_partition
from zorba.core.label_head import attach_label_head, saved_offset
from zorba.core.models import LoadedModel, load_model
from zorba.core.replica import Replica
from zorba.core.scoring import Scorer
from zorba.core.tasks import Example, get_task, read_examples
from zorba.errors import UserError
from zorba.federation.client import ClientState, TokenizedData, run_round
from zorba.federation.config import RunConfig, find_data_dir, resolve_device
from zorba.federation.reliability import Reliability, is_late, online
from zorba.federation.server import ReportRejected, Server
from zorba.memory.memory_model import MemoryModel
from zorba.memory.precision import frozen_bytes, make_client_replica
from zorba.memory.profiles import (
    MIB,
    ClientProfile,
    blocks_within_budget,
    budgets,
    default_profiles,
    load_profiles,
)
from zorba.planner.energy import EnergyPlanner, NoFeasiblePlan
from zorba.planner.plans import (
    AllBlocks,
    AllIfFits,
    BlockPlanner,
    FeasibleRandom,
    FeasibleRoundRobin,
    FedRA,
    FillBudget,
    LabelHeadOnly,
)
from zorba.planner.steprule import StepRule
from zorba.wire import codec
from zorba.wire.keys import derive_key
from zorba.wire.protocol import Hyper


@dataclass
class Inputs:
    """Everything read from disk, validated before any output is written."""

    train: list[Example]
    dev: list[Example]
    test: list[Example] | None
    validation: list[Example] = field(default_factory=list)  # carved from train, held out from clients


@dataclass
class RunState:
    cfg: RunConfig
    lm: LoadedModel
    server: Server
    device: Replica
    clients: list[ClientState]
    history: list[dict] = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)
    test_accuracy: dict = field(default_factory=dict)
    bytes_up: list[int] = field(default_factory=list)
    bytes_down: list[int] = field(default_factory=list)
    block_counts: list[int] = field(default_factory=list)
    seconds: float = 0.0
    torch_device: str = "cpu"  # where the clients trained (cfg.device resolved)
    profiles: list[ClientProfile] = field(default_factory=list)  # each client's class, budget and speed
    memory_model: MemoryModel | None = None  # what the planner predicts client memory with
    dev_predictions: list[int] = field(default_factory=list)  # at the last evaluation
    initial_dev_predictions: list[int] = field(default_factory=list)  # zero-shot
    dev_labels: list[int] = field(default_factory=list)


def read_inputs(cfg: RunConfig) -> Inputs:
    task = get_task(cfg.task)
    data_dir = find_data_dir(cfg)
    train = read_examples(data_dir / cfg.task / "train.tsv", task)
    if cfg.train_size and cfg.train_size < len(train):
        keep = np.random.default_rng(derive_key(cfg.seed, 7)).choice(len(train), cfg.train_size, replace=False)
        train = [train[i] for i in sorted(keep)]
    validation = []
    if cfg.validation_size:
        if cfg.validation_size >= len(train):
            raise UserError(f"validation_size {cfg.validation_size} leaves no training examples (of {len(train)})")
        held = set(np.random.default_rng(derive_key(cfg.seed, 13)).choice(len(train), cfg.validation_size,
                                                                          replace=False).tolist())
        validation = [e for i, e in enumerate(train) if i in held]
        train = [e for i, e in enumerate(train) if i not in held]
    dev = read_examples(data_dir / cfg.task / "dev.tsv", task)
    test = read_examples(cfg.test_file, task) if cfg.test_file else None
    return Inputs(train, dev, test, validation)


def client_memory_model(cfg: RunConfig, lm: LoadedModel) -> MemoryModel:
    """Calibrated (from `zorba profile-memory`) when given, else first principles from block sizes."""
    if cfg.memory_model:
        try:
            calibration = json.loads(Path(cfg.memory_model).read_text())
            mem = MemoryModel.from_dict(calibration)
            error = float(calibration.get("max_abs_error", 0.0))
            if not 0.0 <= error < 1.0:
                raise ValueError(f"max_abs_error {error} is not in [0, 1)")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{cfg.memory_model}: not a memory-model JSON ({type(exc).__name__}: {exc})") from None
        mem = with_label_head(mem, lm, calibration)
        if mem.n_blocks != len(lm.blocks):
            raise UserError(f"{cfg.memory_model}: {mem.n_blocks} blocks, model {cfg.model} has {len(lm.blocks)}")
        check_calibration_matches(cfg, calibration)
        return with_headroom(mem, error)
    return MemoryModel.from_block_sizes([b.numel for b in lm.blocks], frozen_bytes=frozen_bytes(cfg.precision))


def with_label_head(mem: MemoryModel, lm: LoadedModel, calibration: dict) -> MemoryModel:
    """A calibration of the model without its label head, extended by the head's block at the
    calibration's own bytes per active weight (768 weights of MiniLM: 2 KiB)."""
    if not (mem.n_blocks == len(lm.blocks) - 1 and lm.blocks[-1].name == "label_head"):
        return mem
    head = lm.blocks[-1].numel * float(calibration.get("bytes_per_active_param", 4.0))
    return MemoryModel(mem.base, np.append(mem.delta, head), mem.activation)


# What a calibration (`zorba profile-memory`) measured under; a run that differs in any of them would
# plan against another process's memory. Older or hand-written files without a key are not checked on it.
CALIBRATION_KEYS = ("model", "task", "batch_size", "max_len", "local_steps", "precision", "device")


def check_calibration_matches(cfg: RunConfig, calibration: dict) -> None:
    for key in CALIBRATION_KEYS:
        # the device kind that runs: auto resolves, and cuda:1 has cuda:0's memory
        ours = resolve_device(cfg.device) if key == "device" else getattr(cfg, key)
        if key in calibration and _kind(key, calibration[key]) != _kind(key, ours):
            raise UserError(f"{cfg.memory_model}: calibrated with {key} = {calibration[key]!r}, this run has "
                            f"{getattr(cfg, key)!r} (recalibrate: zorba profile-memory)")


def _kind(key: str, value: object) -> object:
    return value.split(":")[0] if key == "device" and isinstance(value, str) else value


def with_headroom(mem: MemoryModel, error: float) -> MemoryModel:
    """A fitted model scaled up by its largest measured relative error e (|predicted / measured - 1|):
    at worst predicted = (1 - e) measured, so dividing by 1 - e makes every fitted prediction an upper
    bound, and a client planned to its budget measures within it (a least-squares fit alone lands below
    the measurement about half the time)."""
    scale = 1.0 / (1.0 - error)
    return MemoryModel(mem.base * scale, mem.delta * scale, mem.activation * scale)


def client_profiles(cfg: RunConfig, mem: MemoryModel) -> list[ClientProfile]:
    if cfg.profiles:
        return load_profiles(cfg.profiles, cfg.clients)
    return default_profiles(cfg.clients, mem, cfg.block_fractions)


def make_planner(cfg: RunConfig, lm: LoadedModel, profiles: list[ClientProfile], mem: MemoryModel) -> BlockPlanner:
    """The planner cfg.planner names (config.PLANNERS)."""
    spare = budgets(profiles) - mem.fixed(len(profiles))
    if cfg.planner == "zorba":
        cap = cfg.memory_cap_mib * MIB if cfg.memory_cap_mib else None
        try:
            return EnergyPlanner(make_step_rule(cfg, lm), mem, budgets(profiles), eps=cap)
        except NoFeasiblePlan as exc:
            raise UserError(str(exc)) from None
    if cfg.planner == "fill":
        return FillBudget(spare, mem.delta)
    if cfg.planner == "feasible-random":
        return FeasibleRandom(spare, mem.delta, cfg.seed)
    if cfg.planner == "feasible-round-robin":
        return FeasibleRoundRobin(spare, mem.delta)
    if cfg.planner == "fedra":
        return FedRA(spare, mem.delta, [i for i, b in enumerate(lm.blocks) if b.name.startswith("layer.")], cfg.seed)
    if cfg.planner == "all-if-fits":
        try:
            return AllIfFits(spare, mem.delta)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    if cfg.planner == "head":
        return LabelHeadOnly(len(lm.blocks) - 1)  # load_run_model gave this planner's model the head: the last block
    return AllBlocks(len(lm.blocks))  # "all": the last name the config's Literal admits


def load_run_model(cfg: RunConfig, lm: LoadedModel | None = None) -> LoadedModel:
    """The model a run trains: `cfg.model` (or `lm`), with a label head when the run has one (`has_label_head`)."""
    lm = lm or load_model(cfg.model)
    return attach_label_head(lm, get_task(cfg.task).num_labels) if has_label_head(cfg) else lm


def head_steps(cfg: RunConfig, lm: LoadedModel) -> tuple[int, int] | None:
    """Server's `head`: (label-head block, cfg.head_steps) when the model has a head and the option is set."""
    if cfg.head_steps is None or not lm.blocks or lm.blocks[-1].name != "label_head":
        return None
    return len(lm.blocks) - 1, cfg.head_steps


def has_label_head(cfg: RunConfig) -> bool:
    """The `head` planner's, or that of a model zorba exported with a trained head (core/label_head.py)."""
    return cfg.planner == "head" or saved_offset(cfg.model) is not None


def make_step_rule(cfg: RunConfig, lm: LoadedModel) -> StepRule:
    """The step factor per block set (planner/steprule.py), from the blocks' sizes."""
    return StepRule(tuple(float(b.numel) for b in lm.blocks), cfg.lr_exponent)


def example_weights(parts: Sequence[Sequence[int]]) -> dict[int, float]:
    """Each client's weight in a block's average: its number of training examples, as in FedAvg. The
    federation then descends the loss over all its data; equal weights would descend the mean of the
    clients' losses, which under label skew is a different task (a few small one-label clients pull
    every prediction toward their label; docs/theory.md, "Client weights")."""
    return {c: float(len(p)) for c, p in enumerate(parts)}


def participants(cfg: RunConfig, round_idx: int) -> list[int]:
    if cfg.participation >= 1.0:
        return list(range(cfg.clients))
    k = max(1, round(cfg.participation * cfg.clients))
    rng = np.random.default_rng(derive_key(cfg.seed, 11, round_idx))
    return sorted(int(c) for c in rng.choice(cfg.clients, size=k, replace=False))


class Runner:
    def __init__(
        self, cfg: RunConfig, inputs: Inputs, lm: LoadedModel | None = None, reliability: Reliability | None = None
    ) -> None:
        self.cfg, self.inputs = cfg, inputs
        self.reliability = reliability or Reliability()
        lm = load_run_model(cfg, lm)
        task = get_task(cfg.task)
        torch_device = resolve_device(cfg.device)
        device_lm = copy.deepcopy(lm)
        device_lm.model.to(torch_device)
        self.eval_scorer = Scorer(lm, task, cfg.max_len)
        self.train_scorer = Scorer(device_lm, task, cfg.max_len)
        self.train = TokenizedData(self.eval_scorer.encode(inputs.train), [e.label for e in inputs.train])
        self.dev = (self.eval_scorer.encode(inputs.dev), [e.label for e in inputs.dev])
        self.test = (self.eval_scorer.encode(inputs.test), [e.label for e in inputs.test]) if inputs.test else None
        self.validation = (self.eval_scorer.encode(inputs.validation), [e.label for e in inputs.validation]) \
            if inputs.validation else None
        parts = dirichlet_partition(self.train.labels, cfg.clients, cfg.alpha, cfg.seed)
        mem = client_memory_model(cfg, lm)
        profiles = client_profiles(cfg, mem)
        counts = blocks_within_budget(profiles, mem)
        hyper = Hyper(cfg.lr, cfg.mu, cfg.q, cfg.local_steps, cfg.batch_size, cfg.dist)
        planner = make_planner(cfg, lm, profiles, mem)
        server = Server(planner, hyper, cfg.seed, Replica(lm), example_weights(parts),
                        robust=self.reliability.robust_policy(), step_rule=make_step_rule(cfg, lm),
                        head=head_steps(cfg, lm))
        clients = [ClientState(c, parts[c]) for c in range(cfg.clients)]
        replica = make_client_replica(device_lm, cfg.precision)
        self.state = RunState(cfg, lm, server, replica, clients, block_counts=counts, torch_device=torch_device,
                              profiles=profiles, memory_model=mem)
        # Clients that never take part (zorba bench's equal-memory rows: a budget below the measured peak).
        self.excluded: frozenset[int] = frozenset()

    def evaluate(self, round_idx: int) -> dict:
        dev = self.eval_scorer.evaluate(*self.dev)
        self.state.dev_predictions = dev.predictions
        if round_idx == 0:  # zero-shot: the other half of the paired test (experiments/significance.py)
            self.state.initial_dev_predictions, self.state.dev_labels = dev.predictions, list(self.dev[1])
        out = {"round": round_idx, "dev_accuracy": dev.accuracy, "dev_loss": dev.loss}
        if self.validation is not None:
            val = self.eval_scorer.evaluate(*self.validation)
            out.update(validation_accuracy=val.accuracy, validation_loss=val.loss)
        if self.test is not None:
            out["test_file_accuracy"] = self.eval_scorer.accuracy(*self.test)
        return out

    @property
    def profiles(self) -> list[ClientProfile]:
        return self.state.profiles

    @property
    def memory_model(self) -> MemoryModel:
        return self.state.memory_model

    def present_clients(self, round_idx: int) -> list[int]:
        """This round's participants minus the (seeded) dropouts and the excluded: whom the server plans for."""
        drawn = [c for c in participants(self.cfg, round_idx) if c not in self.excluded]
        return online(drawn, self.cfg.seed, round_idx, self.reliability.dropout)

    def run_round(self) -> dict:
        """One round through the codec: plans down, reports up, aggregate, replay on the server.
        Late (past the deadline) and rejected reports are left out; the round goes on without them."""
        s, started = self.state, time.perf_counter()
        plans = s.server.make_plans(self.present_clients(s.server.round))
        losses, up, down, answered, busy = [], 0, 0, 0, 0.0
        for cid, plan in plans.items():
            wire_plan = codec.encode_plan(plan)
            client_started = time.perf_counter()
            report = run_round(codec.decode_plan(wire_plan), s.clients[cid], s.device, self.train_scorer, self.train,
                               self.cfg.head_pool)
            wire_report = codec.encode_report(report)
            up, down = up + len(wire_report), down + len(wire_plan)
            seconds = time.perf_counter() - client_started
            busy += seconds
            if is_late(seconds, self.profiles[cid].speed, self.reliability.deadline):
                continue
            try:
                s.server.receive(codec.decode_report(wire_report, s.server.plans))
            except (ReportRejected, codec.DecodeError):
                continue
            answered += 1
            losses.append(report.loss)
        entry = s.server.close_round()
        n = max(len(plans), 1)
        s.bytes_up.append(up // n)
        s.bytes_down.append(down // n)
        return {
            "round": entry.round,
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "clients": len(plans),
            "answered": answered,
            "blocks": {str(c): list(p.blocks) for c, p in plans.items()},
            "uplink_bytes_per_client": up / n,
            "downlink_bytes_per_client": down / n,
            "client_seconds": busy,  # summed over the round's clients (they run one after another here)
            "seconds": time.perf_counter() - started,
        }

    def run(self, on_round: Callable[[dict], None] | None = None) -> RunState:
        s, cfg = self.state, self.cfg
        started = time.perf_counter()
        if "initial" not in s.accuracy:  # a resumed run (zorba.federation.resume) already has it
            initial = self.evaluate(0)
            s.accuracy["initial"] = initial["dev_accuracy"]
            if self.test is not None:
                s.test_accuracy["initial"] = initial["test_file_accuracy"]
        for t in range(s.server.round, cfg.rounds):
            record = self.run_round()
            if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
                record.update({k: v for k, v in self.evaluate(t + 1).items() if k != "round"})
            s.history.append(record)
            if on_round:
                on_round(record)
        if not s.dev_predictions:  # resumed after its last round: the final predictions were not kept
            self.evaluate(cfg.rounds)
        s.accuracy["final"] = s.history[-1]["dev_accuracy"]
        if self.test is not None:
            s.test_accuracy["final"] = s.history[-1]["test_file_accuracy"]
        s.device.sync(s.server.log[s.device.cursor :], first_index=s.device.cursor)
        s.seconds = time.perf_counter() - started
        return s


def check_inputs(cfg: RunConfig) -> Inputs:
    inputs = read_inputs(cfg)
    if cfg.clients > len(inputs.train):
        raise UserError(f"{cfg.clients} clients but only {len(inputs.train)} training examples")
    check_partition([e.label for e in inputs.train], cfg.clients, cfg.alpha, cfg.seed)  # before the model loads
    return inputs
