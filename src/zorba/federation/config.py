"""Run configuration: one pydantic model, validated once, recorded verbatim in result.json."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from zorba.errors import UserError

# zorba: the energy planner (planner/energy.py); feasible-round-robin, fill,
# feasible-random, fedra: budget-feasible baselines; all-if-fits: every block for the clients
# that hold them all, the rest sit out; head (the default): the label head alone, for every client (it brings
# the head, core/label_head.py); all: every block, budgets ignored (planner/plans.py)
PLANNERS = ("zorba", "fill", "feasible-random", "feasible-round-robin", "fedra", "all-if-fits", "head", "all")
Planner = Literal["zorba", "fill", "feasible-random", "feasible-round-robin", "fedra", "all-if-fits", "head", "all"]
# Each planner's lr as its study chose it on validation (SST-2, MiniLM, 8 clients; docs/results.md):
# a run that sets no lr takes its planner's. The head's is in the step rule's units (A9 of theory.md).
STUDY_LR = {"head": 1.2e-6, "feasible-round-robin": 1e-4, "fill": 2e-4, "feasible-random": 2e-4, "fedra": 2e-4,
            "zorba": 2e-4, "all-if-fits": 5e-5, "all": 2e-4}
_DEVICE = re.compile(r"cpu|auto|cuda(:\d+)?")


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    method: str = "zorba"
    task: Literal["sst2", "rte"] = "sst2"
    model: str = "minilm"
    data_dir: str | None = None  # default: ZORBA_DATA_DIR, else the nearest shared/data above the cwd
    test_file: str | None = None
    clients: int = Field(8, ge=1, le=100_000)
    participation: float = Field(1.0, gt=0.0, le=1.0)
    rounds: int = Field(30, ge=1, le=1_000_000)
    local_steps: int = Field(5, ge=1, le=10_000)
    lr: float | None = Field(None, gt=0.0, le=1.0)  # None: the planner's STUDY_LR
    # step rule (planner/steprule.py): a client perturbing d_n of the model's D weights steps with
    # lr * (D / d_n)^lr_exponent; 0 = one lr for every plan
    lr_exponent: float = Field(0.5, ge=0.0, le=2.0)
    mu: float = Field(1e-3, gt=0.0, le=1.0)
    q: int = Field(1, ge=1, le=64)
    batch_size: int = Field(16, ge=1, le=4096)
    max_len: int = Field(64, ge=8, le=4096)
    alpha: float = Field(0.5, gt=0.0, le=1e6)
    dist: Literal["rademacher", "gaussian"] = "rademacher"
    # the planner that beat every other per example in the study (docs/results.md, "Convergence")
    planner: Planner = "head"
    memory_cap_mib: float | None = Field(None, gt=0.0)  # zorba planner: cap on the clients' total memory (eps)
    block_fractions: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)  # default profiles' budgets (memory/profiles.py)
    profiles: str | None = None  # TOML file of client memory budgets and speeds
    memory_model: str | None = None  # calibration JSON from `zorba profile-memory`
    precision: Literal["int8", "bf16", "fp16", "fp32"] = "bf16"  # frozen blocks' dtype on clients (memory/precision.py)
    train_size: int | None = Field(None, ge=1)  # subsample the training split (seeded)
    # examples carved from the training split (seeded, after train_size) and held out from every
    # client: where step sizes are chosen (zorba study), never the dev split
    validation_size: int = Field(0, ge=0)
    eval_every: int = Field(3, ge=1)
    seed: int = Field(0, ge=0, lt=2**63)
    measure_memory: bool = True
    # examples whose features a client training the label head alone computes once a round; its
    # local steps draw their batches from them (federation/client.py)
    head_pool: int = Field(160, ge=1, le=1_000_000)
    # local steps of a client that trains the label head alone (its steps are nearly free); None: local_steps
    head_steps: int | None = Field(200, ge=1, le=100_000)
    device: str = "cpu"  # where clients train: cpu, cuda, cuda:N, or auto (cuda if available)

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        # Only the spelling here: a saved config must stay loadable on a machine without that GPU
        # (verify, resume checks); whether the device exists is checked when a run starts.
        if not _DEVICE.fullmatch(value):
            raise ValueError("device must be cpu, cuda, cuda:N or auto")
        return value

    @model_validator(mode="before")
    @classmethod
    def _planner_lr(cls, values: object) -> object:
        # Filled in before validation so that result.json records the lr the run used.
        if isinstance(values, dict) and values.get("lr") is None:
            planner = values.get("planner", cls.model_fields["planner"].default)
            if isinstance(planner, str) and planner in STUDY_LR:  # any other value fails on its own field
                values = {**values, "lr": STUDY_LR[planner]}
        return values

    @model_validator(mode="after")
    def _check_fractions(self) -> RunConfig:
        if not self.block_fractions or not all(0.0 < f <= 1.0 for f in self.block_fractions):
            raise ValueError("block_fractions must be non-empty values in (0, 1]")
        return self

    @model_validator(mode="after")
    def _check_memory_cap(self) -> RunConfig:
        # the cap is the energy planner's epsilon constraint; another planner would ignore it silently
        if self.memory_cap_mib is not None and self.planner != "zorba":
            raise ValueError(f"memory_cap_mib is the zorba planner's cap; planner {self.planner!r} takes none")
        return self


def make_config(**values) -> RunConfig:
    """Build a RunConfig; any invalid value becomes one UserError line naming the field."""
    try:
        return RunConfig(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        if not err["loc"]:  # a rule across options: the message names them, the input is the whole config
            raise UserError(f"invalid options: {err['msg'].removeprefix('Value error, ')}") from None
        where = ".".join(str(p) for p in err["loc"])
        raise UserError(f"invalid option {where}: {err['msg']} (got {err.get('input')!r})") from None


def find_data_dir(cfg: RunConfig) -> Path:
    """Where the task TSVs are: explicit option, env var, or shared/data in the cwd or a parent."""
    if cfg.data_dir:
        candidates = [Path(cfg.data_dir)]
    elif os.environ.get("ZORBA_DATA_DIR"):
        candidates = [Path(os.environ["ZORBA_DATA_DIR"])]
    else:
        here = Path.cwd().resolve()
        candidates = [p / sub for p in (here, *here.parents) for sub in ("shared/data", "data")]
    for c in candidates:
        if (c / cfg.task / "train.tsv").is_file():
            return c
    raise UserError(f"no {cfg.task}/train.tsv found (looked in {candidates[0]}); pass --data-dir")


def resolve_device(name: str) -> str:
    """The torch device a run trains on: 'auto' picks cuda when one is visible; a GPU that is not
    there is a UserError."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"device {name!r}: no CUDA GPU is available here (use --device cpu)")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name
