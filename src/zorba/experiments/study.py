"""`zorba study`: a resumable grid of runs, each arm given its own step size on validation data.

An arm is one row of a comparison: a block planner of zorba's runner (`zorba study`) or a federated
method on one task (`zorba bench`, zorba.experiments.bench). Every arm runs the same federation (model, task,
partition, batches, client budgets: all derive from the run seed) and is given its own step size: for
each lr of its grid one run on `tune_seed`, scored on a validation split carved from the training data
(never dev); the chosen lr then runs on every seed. A cell is one run; it writes `result.json`
(config, versions, seeds, per-evaluation dev and validation accuracy and loss) and `predictions.json`
(the final per-example dev predictions) atomically, so an interrupted study resumes at the first
missing cell. Layout under the out folder (an arm's name may hold a `/`, e.g. `sst2/fedzo`):

    tune/<arm>/lr<lr>/result.json     the lr grid on tune_seed
    <arm>/seed<k>/result.json         the chosen lr on every seed (tune_seed's is its tuning run)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zorba.errors import UserError, read_toml
from zorba.federation.config import PLANNERS, make_config

CellRun = Callable[["Arm", float, int], tuple[dict, dict]]


@dataclass(frozen=True)
class Arm:
    """One row: its folder name, the lr grid it is tuned over, the shared run options of its cells
    (without lr and seed), and `run(arm, lr, seed) -> (result, predictions)`: one cell, a module-level
    function so that a worker process can import it. `spec` is whatever else `run` needs."""

    name: str
    grid: tuple[float, ...]
    values: dict
    run: CellRun
    spec: dict = field(default_factory=dict)


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    planners: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    lr_grid: list[float] = Field(min_length=1)
    lr_grids: dict[str, list[float]] = {}  # a planner's own grid, where it needs other values
    tune_seed: int = 0
    jobs: int = Field(2, ge=1, le=64)  # cells run at once, one CPU thread each
    run: dict = {}  # shared `zorba run` options (validation_size > 0 required)
    overrides: dict[str, dict] = {}  # a planner's own `zorba run` options on top of `run`

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        unknown = [p for p in [*self.planners, *self.overrides] if p not in PLANNERS]
        if unknown:
            raise ValueError(f"unknown planners {unknown}; known: {list(PLANNERS)}")
        if not self.run.get("validation_size"):
            raise ValueError("run.validation_size must be > 0: step sizes are chosen on a validation split")
        if self.tune_seed not in self.seeds:
            raise ValueError("tune_seed must be one of seeds")
        return self

    def grid(self, planner: str) -> list[float]:
        return self.lr_grids.get(planner, self.lr_grid)

    def arms(self) -> list[Arm]:
        return [Arm(p, tuple(self.grid(p)), self.values(p), run_planner_cell) for p in self.planners]

    def values(self, planner: str) -> dict:
        """The run options of a planner's cells (without lr and seed)."""
        return {**self.run, **self.overrides.get(planner, {}), "planner": planner, "measure_memory": False}

    def compatible(self, before: dict) -> bool:
        """Whether a folder's finished cells (recorded options `before`) may be reused by this study."""
        now = self.model_dump(mode="json")
        return (before["run"] == now["run"] and before.get("overrides", {}) == now["overrides"]
                and before["tune_seed"] == self.tune_seed)


def load_study_config(path: Path) -> StudyConfig:
    data = read_toml(path, "study config")
    try:
        cfg = StudyConfig(**data)
        for p in cfg.planners:  # every cell's run config must be valid before anything runs
            make_config(**{**cfg.values(p), "lr": cfg.grid(p)[0], "seed": cfg.tune_seed})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    return cfg


def tune_dir(out: Path, arm: str, lr: float) -> Path:
    return out / "tune" / arm / f"lr{lr:g}"


def seed_dir(out: Path, arm: str, seed: int) -> Path:
    return out / arm / f"seed{seed}"


def run_planner_cell(arm: Arm, lr: float, seed: int) -> tuple[dict, dict]:
    """One `zorba run` of the arm's planner: its result.json and final dev predictions."""
    from zorba.core.models import state_digest
    from zorba.experiments.job import build_result
    from zorba.federation.runner import Runner, check_inputs, load_run_model

    cfg = make_config(**{**arm.values, "lr": lr, "seed": seed})
    lm = load_run_model(cfg)
    base = state_digest(lm.model)
    state = Runner(cfg, check_inputs(cfg), lm).run()
    return build_result(cfg, state, base), {"dev_predictions": state.dev_predictions}


def run_cell(arm: Arm, lr: float, seed: int, where: str) -> str:
    """One cell: result.json and predictions.json, published together by one rename."""
    result, predictions = arm.run(arm, lr, seed)
    tmp = Path(where).with_name(Path(where).name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a partial cell of our own from an interrupted study
    tmp.mkdir(parents=True)
    (tmp / "result.json").write_text(json.dumps(result, indent=1))
    (tmp / "predictions.json").write_text(json.dumps(predictions))
    os.replace(tmp, where)
    return where


def validation_score(result: dict) -> tuple[float, float]:
    """How a tuning run ranks: mean validation accuracy over its last two evaluations, then the
    lower final validation loss (a 500-example accuracy moves in steps of 0.2%: ties happen)."""
    evals = [h for h in result["history"] if "validation_accuracy" in h]
    last = evals[-2:]
    return sum(h["validation_accuracy"] for h in last) / len(last), -evals[-1]["validation_loss"]


def chosen_lr(arm: Arm, out: Path) -> float | None:
    """The grid's best lr on validation (ties: the smaller lr), once every tuning cell of the arm is done."""
    scores = {}
    for lr in arm.grid:
        path = tune_dir(out, arm.name, lr) / "result.json"
        if not path.is_file():
            return None
        scores[lr] = validation_score(json.loads(path.read_text()))
    return max(scores, key=lambda lr: (*scores[lr], -lr))


def _cell_worker_init(parent: int) -> None:
    """One thread per cell, and no cell outliving the study: a worker ends when its parent does (a
    study stopped by `kill <pid>` leaves no worker training on and writing cells). Linux only."""
    import ctypes
    import signal
    import sys

    import torch

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before the call above
            os._exit(1)


def run_arms(arms: Sequence[Arm], seeds: Sequence[int], tune_seed: int, jobs: int, out: Path,
             say: Callable[[str], None] = print) -> None:
    """Runs every missing cell in the arms' order: an arm's tuning cells, then its seeds as soon as
    its lr is chosen (other arms' cells fill the idle slots), so an interrupted study has whole arms
    done first. `jobs` > 1: that many fresh processes of one thread each; 1: here, one after another."""
    if jobs == 1:
        while ready := next_cells(arms, seeds, tune_seed, out, set()):
            arm, lr, seed, where = ready[0]
            Path(where).parent.mkdir(parents=True, exist_ok=True)
            say(f"started {where}")
            say(f"finished {run_cell(arm, lr, seed, where)}")
        return
    os.environ["OMP_NUM_THREADS"] = "1"  # each cell one thread; `jobs` cells share the cores
    running: dict = {}
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), max_tasks_per_child=1,
                             initializer=_cell_worker_init, initargs=(os.getpid(),)) as pool:
        while True:
            for arm, lr, seed, where in next_cells(arms, seeds, tune_seed, out, set(running.values()))[: jobs - len(running)]:
                Path(where).parent.mkdir(parents=True, exist_ok=True)
                running[pool.submit(run_cell, arm, lr, seed, where)] = where
                say(f"started {where}")
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                say(f"finished {fut.result()}")
                del running[fut]


def run_study(study: StudyConfig, out: Path, say: Callable[[str], None] = print) -> None:
    check_same_federation(out, "study.json", study.compatible)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(study.model_dump(mode="json"), indent=1))
    run_arms(study.arms(), study.seeds, study.tune_seed, study.jobs, out, say)


def check_same_federation(out: Path, record: str, compatible: Callable[[dict], bool]) -> None:
    """Finished cells are skipped by name (arm, lr, seed), so they must come from the same shared run
    options: a folder whose record (`out/record`, the options its cells ran with) is not `compatible`
    is refused rather than mixed in. Arms, seeds and lr values may be added."""
    path = out / record
    if not path.is_file():
        return
    kind = record.removesuffix(".json")
    try:
        same = compatible(json.loads(path.read_text()))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise UserError(f"{path} is not a {kind} record; choose another --out") from None
    if not same:
        raise UserError(f"{out} holds cells of a {kind} with other run options or tune_seed; "
                        "choose another --out (or remove that folder)")


def next_cells(arms: Sequence[Arm], seeds: Sequence[int], tune_seed: int, out: Path,
               busy: set[str]) -> list[tuple[Arm, float, int, str]]:
    """The cells that can start now, in priority order (a seed cell needs its arm's chosen lr;
    tune_seed's seed cell is its tuning run, copied). A seed cell run at another lr (the grid grew
    and another value won) is stale: it is removed and runs again."""
    ready = []
    for arm in arms:
        for lr in arm.grid:
            where = tune_dir(out, arm.name, lr)
            if not (where / "result.json").is_file() and str(where) not in busy:
                ready.append((arm, lr, tune_seed, str(where)))
        lr = chosen_lr(arm, out)
        if lr is None:
            continue
        for seed in seeds:
            where = seed_dir(out, arm.name, seed)
            if str(where) in busy:
                continue
            if (where / "result.json").is_file():
                if json.loads((where / "result.json").read_text())["config"]["lr"] == lr:
                    continue
                shutil.rmtree(where)
            if seed == tune_seed:
                tmp = where.with_name(where.name + ".partial")
                shutil.rmtree(tmp, ignore_errors=True)
                where.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(tune_dir(out, arm.name, lr), tmp)
                os.replace(tmp, where)
            else:
                ready.append((arm, lr, seed, str(where)))
    return ready
