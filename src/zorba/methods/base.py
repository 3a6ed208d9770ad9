"""The one interface every federated fine-tuning method implements (a small class per method,
registered by name, as peft's tuners are), and the setup all methods share: the same model, data,
Dirichlet partition, participants, mini-batches and scorer, so two methods differ only in the method.

A method keeps ONE working model. Between rounds it holds the global weights (that is what is
evaluated); `client_update` trains it in place as client `cid` would and returns what that client
uploads. Everything a real client must hold (snapshots, optimiser states, gradients, the serialised
upload) is created inside `client_update`, so a fresh process that calls it once measures a client's
peak memory (methods/probe.py); server-side state lives outside it. The validation split (carved from
the training data by runner.read_inputs) is evaluated beside dev and never reaches a client's data."""

from __future__ import annotations

import copy
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from zorba.core.data import dirichlet_partition, sample_batch
from zorba.core.models import LoadedModel, load_model
from zorba.core.scoring import Evaluation, Scorer
from zorba.core.tasks import Task, get_task
from zorba.errors import UserError
from zorba.federation.client import TokenizedData
from zorba.federation.config import RunConfig
from zorba.federation.runner import Inputs
from zorba.wire.protocol import round_seed


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaselineOptions(NoOptions):
    # How the server averages its clients: equally (as these baselines' committed bench cells ran), or
    # by training examples, as McMahan et al.'s FedAvg and zorba's server do (docs/theory.md, "Client weights").
    weights: Literal["equal", "examples"] = "equal"


@dataclass
class Setup:
    """What every method of one benchmark cell shares (built from the same RunConfig and Inputs)."""

    cfg: RunConfig
    inputs: Inputs
    lm: LoadedModel  # the method's own working copy
    task: Task
    scorer: Scorer
    train: TokenizedData
    dev: tuple[list[list[int]], list[int]]
    parts: list[np.ndarray]
    validation: tuple[list[list[int]], list[int]] | None = None

    def batch(self, cid: int, round_idx: int, step: int) -> tuple[list[list[int]], list[int]]:
        """Client cid's mini-batch for a local step: the same draw ZorBA's clients make (federation/client.py)."""
        idx = sample_batch(self.parts[cid], self.cfg.batch_size, round_seed(self.cfg.seed, round_idx), cid, step)
        return [self.train.ids[i] for i in idx], [self.train.labels[i] for i in idx]


def make_setup(cfg: RunConfig, inputs: Inputs, lm: LoadedModel | None = None) -> Setup:
    """A setup with its own copy of `lm` (methods train in place, so they must not share weights)."""
    # The model as the baselines' authors run it: zorba's label head is zorba's (its own Runner adds it).
    lm = copy.deepcopy(lm) if lm is not None else load_model(cfg.model)
    task = get_task(cfg.task)
    scorer = Scorer(lm, task, cfg.max_len)
    train = TokenizedData(scorer.encode(inputs.train), [e.label for e in inputs.train])
    dev = (scorer.encode(inputs.dev), [e.label for e in inputs.dev])
    validation = (scorer.encode(inputs.validation), [e.label for e in inputs.validation]) if inputs.validation else None
    parts = dirichlet_partition(train.labels, cfg.clients, cfg.alpha, cfg.seed)
    return Setup(cfg, inputs, lm, task, scorer, train, dev, parts, validation)


@dataclass
class Upload:
    """One client's round: the exact bytes it sends, its mean training loss and its pass counts."""

    data: bytes
    loss: float
    forward: int
    backward: int = 0
    seconds: float = 0.0  # the client's compute time (Method.train_client measures it)


@dataclass
class RoundStats:
    """One round as the engine records it; byte lists have one entry per participating client."""

    loss: float
    up_bytes: list[int]
    down_bytes: list[int]
    forward: int  # summed over the round's clients
    backward: int
    extra: dict | None = None
    client_seconds: float = 0.0  # summed over the round's clients


class Method(ABC):
    """Interface. Subclasses set `family` and `Options`, and implement `client_update` and `run_round`."""

    family: ClassVar[str] = "base"
    name: str = "base"  # the registry name, set by make_method
    first_order: ClassVar[bool] = False
    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, setup: Setup, options: BaseModel) -> None:
        self.setup, self.cfg, self.options = setup, setup.cfg, options
        self.excluded: frozenset[int] = frozenset()

    @property
    def frozen_precision(self) -> str:
        """How this method's clients store the weights they do not train (the bench table shows it):
        methods that train every weight have none."""
        return "none frozen"

    @abstractmethod
    def client_update(self, cid: int, round_idx: int) -> Upload:
        """Train the working model in place as client `cid`; return its upload. ZO clients restore the
        global weights before returning; first-order clients leave their local weights behind."""

    @abstractmethod
    def run_round(self, round_idx: int, clients: list[int]) -> RoundStats:
        """One federated round over `clients`: their updates, aggregated into the global model."""

    def client_weights(self, clients: Sequence[int]) -> np.ndarray | None:
        """Each client's share of the server's average, or None for the plain mean (computed as a sum
        divided by the count, so equal-weight runs keep their bits)."""
        if getattr(self.options, "weights", "equal") == "equal":
            return None
        sizes = np.asarray([len(self.setup.parts[c]) for c in clients], dtype=np.float64)
        return sizes / sizes.sum()

    def exclude(self, clients: frozenset[int]) -> None:
        """Clients that never take part (zorba bench's equal-memory rows); the engine leaves them out
        of the participants it hands `run_round`, a method that draws its own must too."""
        self.excluded = clients

    def train_client(self, cid: int, round_idx: int) -> Upload:
        """`client_update`, timed: what a round's time-to-accuracy counts is client compute, not the
        server's aggregation or the simulation's bookkeeping."""
        started = time.perf_counter()
        upload = self.client_update(cid, round_idx)
        upload.seconds = time.perf_counter() - started
        return upload

    def idle_round(self, round_idx: int) -> RoundStats:
        """A round in which no admitted client was drawn: nothing trains and nothing travels."""
        return RoundStats(float("nan"), [], [], forward=0, backward=0)

    def evaluate(self) -> dict[str, Evaluation]:
        """The global model on dev and, when the setup has one, on the validation split."""
        out = {"dev": self.setup.scorer.evaluate(*self.setup.dev)}
        if self.setup.validation is not None:
            out["validation"] = self.setup.scorer.evaluate(*self.setup.validation)
        return out


def parse_options(cls: type[Method], values: dict) -> BaseModel:
    try:
        return cls.Options(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "options"
        raise UserError(f"{cls.family}: invalid option {where}: {err['msg']} (got {err.get('input')!r})") from None
