"""`zorba study`: a resumable time-to-accuracy study of block planners under client memory budgets.

Every planner runs the same federation (model, task, partition, batches, client budgets: all derive
from the run seed) and is given its own step size: for each lr of the grid one run on `tune_seed`,
scored on a validation split carved from the training data (never dev); the chosen lr then runs on
every seed. A cell is one run; it writes `result.json` (config, versions, seeds, per-evaluation dev
and validation accuracy and loss) and `predictions.json` (the final per-example dev predictions)
atomically, so an interrupted study resumes at the first missing cell. Layout under the out folder:

    tune/<planner>/lr<lr>/result.json     the lr grid on tune_seed
    <planner>/seed<k>/result.json         the chosen lr on every seed (tune_seed's is its tuning run)
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zorba.config import PLANNERS, make_config
from zorba.errors import UserError, read_toml


class StudyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    planners: list[str] = Field(min_length=1)
    seeds: list[int] = Field(min_length=1)
    lr_grid: list[float] = Field(min_length=1)
    lr_grids: dict[str, list[float]] = {}  # a planner's own grid, where it needs other values
    tune_seed: int = 0
    jobs: int = Field(2, ge=1, le=64)  # cells run at once, one CPU thread each
    run: dict = {}  # shared `zorba run` options (validation_size > 0 required)

    @model_validator(mode="after")
    def _check(self) -> StudyConfig:
        unknown = [p for p in self.planners if p not in PLANNERS]
        if unknown:
            raise ValueError(f"unknown planners {unknown}; known: {list(PLANNERS)}")
        if not self.run.get("validation_size"):
            raise ValueError("run.validation_size must be > 0: step sizes are chosen on a validation split")
        if self.tune_seed not in self.seeds:
            raise ValueError("tune_seed must be one of seeds")
        return self

    def grid(self, planner: str) -> list[float]:
        return self.lr_grids.get(planner, self.lr_grid)


def load_study_config(path: Path) -> StudyConfig:
    data = read_toml(path, "study config")
    try:
        cfg = StudyConfig(**data)
        for p in cfg.planners:  # every cell's run config must be valid before anything runs
            make_config(**{**cfg.run, "planner": p, "lr": cfg.grid(p)[0], "seed": cfg.tune_seed})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"{path}: {'.'.join(map(str, err['loc']))}: {err['msg']}") from None
    return cfg


def tune_dir(out: Path, planner: str, lr: float) -> Path:
    return out / "tune" / planner / f"lr{lr:g}"


def seed_dir(out: Path, planner: str, seed: int) -> Path:
    return out / planner / f"seed{seed}"


def cell_values(study: StudyConfig, planner: str, lr: float, seed: int) -> dict:
    return {**study.run, "planner": planner, "lr": lr, "seed": seed, "measure_memory": False}


def run_cell(values: dict, where: str) -> str:
    """One run in a fresh process (one thread): result.json and predictions.json, written atomically."""
    import torch

    from zorba.job import build_result
    from zorba.models import load_model, state_digest
    from zorba.runner import Runner, check_inputs

    torch.set_num_threads(1)
    cfg = make_config(**values)
    lm = load_model(cfg.model)
    base = state_digest(lm.model)
    state = Runner(cfg, check_inputs(cfg), lm).run()
    result = build_result(cfg, state, base)
    tmp = Path(where).with_name(Path(where).name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)  # a partial cell of our own from an interrupted study
    tmp.mkdir(parents=True)
    (tmp / "result.json").write_text(json.dumps(result, indent=1))
    (tmp / "predictions.json").write_text(json.dumps({"dev_predictions": state.dev_predictions}))
    os.replace(tmp, where)
    return where


def validation_score(result: dict) -> tuple[float, float]:
    """How a tuning run ranks: mean validation accuracy over its last two evaluations, then the
    lower final validation loss (a 500-example accuracy moves in steps of 0.2%: ties happen)."""
    evals = [h for h in result["history"] if "validation_accuracy" in h]
    last = evals[-2:]
    return sum(h["validation_accuracy"] for h in last) / len(last), -evals[-1]["validation_loss"]


def chosen_lr(study: StudyConfig, out: Path, planner: str) -> float | None:
    """The grid's best lr on validation, once every tuning cell of the planner is done."""
    scores = {}
    for lr in study.grid(planner):
        path = tune_dir(out, planner, lr) / "result.json"
        if not path.is_file():
            return None
        scores[lr] = validation_score(json.loads(path.read_text()))
    return max(scores, key=lambda lr: (*scores[lr], -lr))


def run_study(study: StudyConfig, out: Path, say: Callable[[str], None] = print) -> None:
    """Runs every missing cell, `jobs` at a time, in the config's planner order: a planner's tuning
    cells, then its seeds as soon as its lr is chosen (other planners' cells fill the idle slots), so
    an interrupted study has whole planners done first."""
    os.environ["OMP_NUM_THREADS"] = "1"  # each cell one thread; `jobs` cells share the cores
    check_same_federation(study, out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.json").write_text(json.dumps(study.model_dump(mode="json"), indent=1))
    running: dict = {}
    with ProcessPoolExecutor(study.jobs, mp_context=get_context("spawn"), max_tasks_per_child=1) as pool:
        while True:
            for values, where in next_cells(study, out, set(running.values()))[: study.jobs - len(running)]:
                Path(where).parent.mkdir(parents=True, exist_ok=True)
                running[pool.submit(run_cell, values, where)] = where
                say(f"started {where}")
            if not running:
                return
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for fut in done:
                say(f"finished {fut.result()}")
                del running[fut]


def check_same_federation(study: StudyConfig, out: Path) -> None:
    """Finished cells are skipped by name (planner, lr, seed), so they must come from the same shared
    run options: a study whose `run` or `tune_seed` changed is refused rather than mixed in. Planners,
    seeds and lr values may be added."""
    path = out / "study.json"
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text())
        same = before["run"] == study.model_dump(mode="json")["run"] and before["tune_seed"] == study.tune_seed
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path} is not a study record; choose another --out") from None
    if not same:
        raise UserError(f"{out} holds cells of a study with other run options or tune_seed; "
                        "choose another --out (or remove that folder)")


def next_cells(study: StudyConfig, out: Path, busy: set[str]) -> list[tuple[dict, str]]:
    """The cells that can start now, in priority order (a seed cell needs its planner's chosen lr;
    tune_seed's seed cell is its tuning run, copied). A seed cell run at another lr (the grid grew
    and another value won) is stale: it is removed and runs again."""
    ready = []
    for p in study.planners:
        for lr in study.grid(p):
            where = tune_dir(out, p, lr)
            if not (where / "result.json").is_file() and str(where) not in busy:
                ready.append((cell_values(study, p, lr, study.tune_seed), str(where)))
        lr = chosen_lr(study, out, p)
        if lr is None:
            continue
        for seed in study.seeds:
            where = seed_dir(out, p, seed)
            if str(where) in busy:
                continue
            if (where / "result.json").is_file():
                if json.loads((where / "result.json").read_text())["config"]["lr"] == lr:
                    continue
                shutil.rmtree(where)
            if seed == study.tune_seed:
                where.parent.mkdir(parents=True, exist_ok=True)
                shutil.copytree(tune_dir(out, p, lr), where)
            else:
                ready.append((cell_values(study, p, lr, seed), str(where)))
    return ready
