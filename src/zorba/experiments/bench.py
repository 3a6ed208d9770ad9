"""`zorba bench`: federated fine-tuning methods side by side on the same model, data, partition,
participants and mini-batches, each with its own step size chosen on validation data.

A row is a `[[method]]` entry on one task; with `equal_memory` a method whose clients hold the same
state every round also gets a row "<label> (equal memory)" in which a client takes part only if its
device class's budget holds the method's measured peak (zorba.experiments.bench_memory). Each row is an arm of
zorba.experiments.study: its lr grid runs on `tune_seed` and is scored on the validation split carved from the
training data (never dev), then every seed runs at the chosen lr; cells are written atomically and
skipped when present, so the bench resumes cell by cell. Under the out folder:

    bench.json                         the options the cells ran with (a folder of other options is refused)
    tune/<task>/<row>/lr<lr>/          tuning cells: result.json, predictions.json
    <task>/<row>/seed<k>/              seed cells (tune_seed's is its tuning run, copied)
    memory/<task>/<row>.json           measured client peaks, budgets and the clients the row may use
    summary.md, summary.json, *.png    zorba.experiments.bench_report, from the files above only
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zorba.errors import UserError, read_toml
from zorba.experiments.bench_memory import slug
from zorba.experiments.study import Arm, check_same_federation, run_arms, seed_dir
from zorba.federation.config import RunConfig, make_config
from zorba.wire.keys import derive_key

_DEV_TAG = 0xDE5
RECORD = "bench.json"
_SET_BY_BENCH = ("lr", "seed", "task", "method")  # a cell's lr, seed and task come from the grid; method = the row


class MethodEntry(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    label: str | None = None
    options: dict = Field(default_factory=dict)
    lr_grid: list[float] = Field(min_length=1)
    equal_memory: bool | None = None  # None: the bench's `equal_memory`

    @property
    def display(self) -> str:
        return self.label or self.name

    def run_overrides(self) -> dict:
        """Everything else in the [[method]] table overrides the shared [run] options."""
        return dict(self.model_extra or {})


class Row(BaseModel):
    """One line of the table: a method entry, plain or restricted to the clients its peak fits."""

    model_config = ConfigDict(frozen=True)

    entry: MethodEntry
    equal_memory: bool = False

    @property
    def label(self) -> str:
        return f"{self.entry.display} (equal memory)" if self.equal_memory else self.entry.display

    @property
    def slug(self) -> str:
        return slug(self.label)


def budget_blind(entry: MethodEntry) -> bool:
    """Whether the method's client holds the same state every round (so one measured peak says
    whether it fits a budget): every baseline, and zorba with every block active. zorba's default
    planner (`head`) and the budget-feasible ones plan into the budgets themselves."""
    from zorba.methods import method_class

    cls, defaults = method_class(entry.name)
    if cls.family != "zorba":
        return True
    return {**defaults, **entry.options}.get("planner") == "all"


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[str] = Field(["sst2"], min_length=1)
    seeds: list[int] = Field(min_length=1)
    tune_seed: int = 0
    jobs: int = Field(2, ge=1, le=64)  # cells run at once, one CPU thread each (1: in this process)
    dev_size: int | None = Field(None, ge=1)  # seeded dev subsample, identical for every row and seed
    reference: str | None = None  # the row whose mean final dev accuracy is the target accuracy
    equal_memory: bool = False  # add "<label> (equal memory)" rows (see budget_blind)
    measure_memory: bool = True
    run: dict = Field(default_factory=dict)  # shared `zorba run` options (validation_size > 0 required)
    method: list[MethodEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        labels = [r.label for r in self.rows()]
        slugs = [r.slug for r in self.rows()]
        if len(set(labels)) != len(labels) or len(set(slugs)) != len(slugs):
            raise ValueError(f"method labels (and their folder names) must be distinct, got {labels}")
        if self.tune_seed not in self.seeds:
            raise ValueError("tune_seed must be one of seeds")
        if not self.run.get("validation_size"):
            raise ValueError("run.validation_size must be > 0: step sizes are chosen on a validation split")
        for entry in self.method:
            for key in _SET_BY_BENCH:
                if key in self.run or key in entry.run_overrides():
                    raise ValueError(f"{key!r} is set by the bench (lr_grid, seeds, tasks, label), not by [run] or a method")
        if self.reference is not None and self.reference not in labels:
            raise ValueError(f"reference {self.reference!r} is not a method label ({labels})")
        if any(r.equal_memory for r in self.rows()) and not self.measure_memory:
            raise ValueError("equal-memory rows need measure_memory = true: their clients follow the measured peaks")
        return self

    def rows(self) -> list[Row]:
        out = []
        for e in self.method:
            out.append(Row(entry=e))
            if e.equal_memory or (e.equal_memory is None and self.equal_memory and budget_blind(e)):
                out.append(Row(entry=e, equal_memory=True))
        return out

    def run_values(self, row: Row, task: str) -> dict:
        """A cell's RunConfig values, without lr and seed."""
        return {**self.run, **row.entry.run_overrides(), "task": task, "method": row.label, "measure_memory": False}

    def run_config(self, row: Row, task: str, lr: float | None = None, seed: int | None = None) -> RunConfig:
        return make_config(**self.run_values(row, task), lr=lr or row.entry.lr_grid[0],
                           seed=self.tune_seed if seed is None else seed)

    def arm(self, row: Row, task: str, clients: list[int] | None) -> Arm:
        spec = {"name": row.entry.name, "options": row.entry.options, "label": row.label,
                "equal_memory": row.equal_memory, "dev_size": self.dev_size, "clients": clients}
        return Arm(f"{task}/{row.slug}", tuple(row.entry.lr_grid), self.run_values(row, task), run_method_cell, spec)

    def compatible(self, before: dict) -> bool:
        """A folder's cells may be reused if the shared options are the same and every method label in
        both ran the same method and options (lr grids, rows, seeds and tasks may grow)."""
        now = self.model_dump(mode="json")
        if any(before[k] != now[k] for k in ("run", "tune_seed", "dev_size")):
            return False
        strip = lambda e: {k: v for k, v in e.items() if k != "lr_grid"}  # noqa: E731
        old = {e.get("label") or e["name"]: strip(e) for e in before["method"]}
        return all(strip(e) == old[e.get("label") or e["name"]] for e in now["method"] if (e.get("label") or e["name"]) in old)


def load_bench_config(path: str | Path) -> BenchConfig:
    """Parse and validate everything (every row's RunConfig and method options) before any run."""
    from zorba.methods import method_class
    from zorba.methods.base import parse_options

    path = Path(path)
    data = read_toml(path, "bench config")
    try:
        bench = BenchConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "config"
        raise UserError(f"{path}: {where}: {err['msg'].removeprefix('Value error, ')}") from None
    for entry in bench.method:
        cls, defaults = method_class(entry.name)
        parse_options(cls, {**defaults, **entry.options})
        if entry.equal_memory and not budget_blind(entry):
            raise UserError(f"{path}: {entry.display}: equal_memory needs a client that holds the same blocks every "
                            "round (a baseline, or zorba with planner 'all'); zorba's own planner fits the budgets itself")
        for task in bench.tasks:
            for lr in entry.lr_grid:
                bench.run_config(Row(entry=entry), task, lr)
    return bench


def dev_subset(n: int, dev_size: int | None) -> list[int] | None:
    """Indices of the seeded dev subsample (the same for every row and seed); None: all of dev."""
    if not dev_size or dev_size >= n:
        return None
    return sorted(int(i) for i in np.random.default_rng(derive_key(_DEV_TAG)).choice(n, dev_size, replace=False))


def subsample_dev(inputs, dev_size: int | None):
    keep = dev_subset(len(inputs.dev), dev_size)
    if keep is None:
        return inputs
    return type(inputs)(inputs.train, [inputs.dev[i] for i in keep], inputs.test, inputs.validation)


def run_method_cell(arm: Arm, lr: float, seed: int) -> tuple[dict, dict]:
    """One bench cell: the row's method at (lr, seed) on the shared setup, the validation split held
    out of every client's data; its result.json and final per-example dev predictions."""
    from zorba.experiments.significance import mcnemar
    from zorba.federation.results import versions
    from zorba.federation.runner import check_inputs
    from zorba.methods import make_method, make_setup
    from zorba.methods.engine import run_method

    spec = arm.spec
    cfg = make_config(**{**arm.values, "lr": lr, "seed": seed})
    inputs = check_inputs(cfg)
    keep = dev_subset(len(inputs.dev), spec["dev_size"])
    inputs = subsample_dev(inputs, spec["dev_size"])
    method = make_method(spec["name"], make_setup(cfg, inputs), spec["options"])
    run = run_method(method, clients=spec["clients"])
    labels = [e.label for e in inputs.dev]
    predictions = {"dev_predictions": run.pop("dev_predictions"), "initial_dev_predictions": run.pop("initial_dev_predictions"),
                   "dev_labels": labels, "dev_indices": keep if keep is not None else list(range(len(labels)))}
    result = {
        "label": spec["label"], "method": spec["name"], "task": cfg.task, "model": cfg.model,
        "equal_memory": spec["equal_memory"],
        "clients_used": spec["clients"] if spec["clients"] is not None else list(range(cfg.clients)),
        "options": method.options.model_dump(mode="json"), "first_order": method.first_order,
        "frozen_precision": method.frozen_precision,
        "config": method.cfg.model_dump(mode="json"), "versions": versions(),
        "seeds": {"run": seed, "partition": seed, "note": "every stream derives from the run seed; dev subsample fixed"},
        "dev_examples": len(inputs.dev), "validation_examples": len(inputs.validation), "train_examples": len(inputs.train),
        **run,
        "dev_significance": mcnemar(predictions["initial_dev_predictions"], predictions["dev_predictions"], labels),
    }
    return result, predictions


def check_cells_used(out: Path, arm: str, clients: list[int]) -> None:
    """Cells are skipped by name: an equal-memory row's finished cells must have run with the clients
    its memory record admits now (a re-probe near a budget edge can change them)."""
    for done in [*out.glob(f"tune/{arm}/lr*/result.json"), *out.glob(f"{arm}/seed*/result.json")]:
        used = json.loads(done.read_text()).get("clients_used")
        if used != clients:
            raise UserError(f"{done.parent} ran with clients {used}, but the memory record now admits {clients}; "
                            f"remove the row's cells or restore its memory record")


def run_bench(bench: BenchConfig, out: Path, say: Callable[[str], None] = print) -> None:
    """Measure what is missing of the client peaks, run every missing cell, then the zorba rows'
    peaks (they follow the plans of their tune_seed run). Summaries: zorba.experiments.bench_report."""
    from zorba.experiments.bench_memory import measure_planned, measure_row, memory_path

    check_same_federation(out, RECORD, bench.compatible)
    out.mkdir(parents=True, exist_ok=True)
    (out / RECORD).write_text(json.dumps(bench.model_dump(mode="json"), indent=1))
    arms = []
    for task in bench.tasks:
        for row in bench.rows():
            clients = None
            if bench.measure_memory and budget_blind(row.entry):
                record = measure_row(bench, row, task, out, say)
                clients = record["clients_used"] if row.equal_memory else None
            if clients == []:
                say(f"skipped {task}/{row.slug}: no client's budget holds the measured peak")
                continue
            if clients is not None:
                check_cells_used(out, f"{task}/{row.slug}", clients)
            arms.append(bench.arm(row, task, clients))
    run_arms(arms, bench.seeds, bench.tune_seed, bench.jobs, out, say)
    if bench.measure_memory:
        for task in bench.tasks:
            for row in bench.rows():
                done = seed_dir(out, f"{task}/{row.slug}", bench.tune_seed) / "result.json"
                if not budget_blind(row.entry) and done.is_file() and not memory_path(out, task, row.slug).is_file():
                    measure_planned(bench, row, task, json.loads(done.read_text()), out, say)
