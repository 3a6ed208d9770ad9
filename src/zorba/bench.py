"""`zorba bench`: run a matrix of methods x tasks x seeds on the same model, data and partition, and
write a side-by-side table (Markdown and CSV) and plots.

Each cell (method, task, seed) is one in-process run (zorba.methods.engine) whose result is written
to cells/<cell>.json when it completes; a rerun skips cells whose file exists, so a long benchmark
can be interrupted and resumed. Client memory is measured once per (method, task), in fresh
processes (zorba.memprobe for ZorBA, zorba.methods.probe for the baselines)."""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from zorba.config import RunConfig, make_config
from zorba.errors import UserError, read_toml
from zorba.rng import derive_key

_DEV_TAG = 0xDE5


class MethodEntry(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    label: str | None = None
    options: dict = Field(default_factory=dict)

    @property
    def display(self) -> str:
        return self.label or self.name

    def run_overrides(self) -> dict:
        """Everything else in the [[method]] table overrides the shared [run] options."""
        return dict(self.model_extra or {})


class BenchConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[str] = ["sst2"]
    seeds: list[int] = [0]
    dev_size: int | None = Field(None, ge=1)  # seeded dev subsample, identical for every method and seed
    measure_memory: bool = True
    run: dict = Field(default_factory=dict)
    method: list[MethodEntry]

    @model_validator(mode="after")
    def _check(self) -> BenchConfig:
        labels = [m.display for m in self.method]
        if len(set(labels)) != len(labels):
            raise ValueError(f"method labels must be distinct, got {labels}")
        if not self.seeds or not self.tasks:
            raise ValueError("tasks and seeds must be non-empty")
        return self

    def run_config(self, entry: MethodEntry, task: str, seed: int) -> RunConfig:
        values = {**self.run, **entry.run_overrides(), "task": task, "seed": seed, "method": entry.display}
        return make_config(**values)


def load_bench_config(path: str | Path) -> BenchConfig:
    """Parse and validate everything (every cell's RunConfig, every method's options) before any run."""
    from zorba.methods import method_class
    from zorba.methods.base import parse_options

    path = Path(path)
    data = read_toml(path, "bench config")
    try:
        bench = BenchConfig(**data)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise UserError(f"{path}: {'.'.join(str(p) for p in err['loc']) or 'config'}: {err['msg']}") from None
    for entry in bench.method:
        cls, defaults = method_class(entry.name)
        parse_options(cls, {**defaults, **entry.options})
        for task in bench.tasks:
            bench.run_config(entry, task, bench.seeds[0])
    return bench


def cell_id(label: str, task: str, seed: int) -> str:
    return f"{label}__{task}__seed{seed}"


def subsample_dev(inputs, dev_size: int | None):
    if not dev_size or dev_size >= len(inputs.dev):
        return inputs
    keep = np.random.default_rng(derive_key(_DEV_TAG)).choice(len(inputs.dev), dev_size, replace=False)
    return type(inputs)(inputs.train, [inputs.dev[i] for i in sorted(keep)], inputs.test)


def write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


def run_cell(bench: BenchConfig, entry: MethodEntry, task: str, seed: int, lm_cache: dict, on_round=None) -> dict:
    from zorba.methods import make_method, make_setup
    from zorba.methods.engine import run_method
    from zorba.models import load_model
    from zorba.runner import check_inputs

    cfg = bench.run_config(entry, task, seed)
    inputs = subsample_dev(check_inputs(cfg), bench.dev_size)
    if cfg.model not in lm_cache:
        lm_cache.clear()  # one model in memory at a time
        lm_cache[cfg.model] = load_model(cfg.model)
    method = make_method(entry.name, make_setup(cfg, inputs, lm_cache[cfg.model]), entry.options)
    result = run_method(method, on_round)
    result.update(method=entry.display, registry_name=entry.name, task=task, seed=seed,
                  options=method.options.model_dump(mode="json"), config=cfg.model_dump(mode="json"),
                  dev_examples=len(inputs.dev), first_order=method.first_order)
    # Memory depends on the model, method, batch and length, not on the seed: measured once per method
    # (first task, first seed) to keep the benchmark short; the table says so.
    if bench.measure_memory and seed == bench.seeds[0] and task == bench.tasks[0]:
        result["peak_bytes_per_client"] = method.client_peak_memory()
    return result


def is_done(path: Path, bench: BenchConfig, entry: MethodEntry, task: str, seed: int) -> bool:
    """A cell is done when its file exists and was run with the same config and options (a changed
    config reruns it instead of mixing old and new results)."""
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return False
    from zorba.methods import method_class
    from zorba.methods.base import parse_options

    cls, defaults = method_class(entry.name)
    options = parse_options(cls, {**defaults, **entry.options}).model_dump(mode="json")
    return old.get("config") == bench.run_config(entry, task, seed).model_dump(mode="json") and old.get("options") == options


def run_bench(bench: BenchConfig, out: Path, progress: bool = True) -> list[dict]:
    """Run every missing cell, then (re)write the tables and plots from all cell files."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cells = [(e, t, s) for e in bench.method for t in bench.tasks for s in bench.seeds]
    lm_cache: dict = {}
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, disable=not progress) as bar:
        overall = bar.add_task("cells", total=len(cells), status="")
        for entry, task, seed in cells:
            path = out / "cells" / f"{cell_id(entry.display, task, seed)}.json"
            if is_done(path, bench, entry, task, seed):
                bar.update(overall, advance=1, status=f"{path.stem}: done earlier, skipped")
                continue
            bar.update(overall, status=path.stem)
            rounds = bar.add_task(f"  {path.stem}", total=bench.run_config(entry, task, seed).rounds, status="")

            def on_round(rec: dict, rounds=rounds) -> None:
                acc = f"  acc {100 * rec['dev_accuracy']:.1f}%" if "dev_accuracy" in rec else ""
                bar.update(rounds, advance=1, status=f"loss {rec['train_loss']:.4f}{acc}")

            write_json_atomic(path, run_cell(bench, entry, task, seed, lm_cache, on_round))
            bar.remove_task(rounds)
            bar.update(overall, advance=1)
    results = [json.loads((out / "cells" / f"{cell_id(e.display, t, s)}.json").read_text()) for e, t, s in cells]
    write_tables(results, out)
    write_plots(results, out)
    return results


# --- tables ------------------------------------------------------------------------------------------

def summarise(results: list[dict]) -> list[dict]:
    """One row per (method, task): accuracy mean and std over seeds, everything else averaged."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["task"]), []).append(r)
    rows = []
    for (method, task), rs in groups.items():
        acc = np.array([r["final_accuracy"] for r in rs])
        peaks = next((r["peak_bytes_per_client"] for r in results
                      if r["method"] == method and r.get("peak_bytes_per_client")), None)
        cfg = rs[0]["config"]
        rows.append({
            "method": method,
            "task": task,
            "seeds": len(rs),
            "rounds": cfg["rounds"],
            "clients": cfg["clients"],
            "initial_accuracy": float(np.mean([r["initial_accuracy"] for r in rs])),
            "final_accuracy_mean": float(acc.mean()),
            "final_accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
            "peak_client_mem_max_bytes": max(peaks) if peaks else math.nan,
            "peak_client_mem_mean_bytes": float(np.mean(peaks)) if peaks else math.nan,
            "uplink_bytes_per_client_round": _mean(rs, "uplink_bytes_per_client_round"),
            "downlink_bytes_per_client_round": _mean(rs, "downlink_bytes_per_client_round"),
            "uplink_bytes_total": _mean(rs, "uplink_bytes_total"),
            "downlink_bytes_total": _mean(rs, "downlink_bytes_total"),
            "forward_passes": _mean(rs, "forward_passes"),
            "backward_passes": _mean(rs, "backward_passes"),
            "seconds": _mean(rs, "seconds"),
            "note": next((r["extra"]["fallback"] for r in rs if r.get("extra", {}).get("fallback")), ""),
        })
    return rows


def _mean(rs: list[dict], key: str) -> float:
    return float(np.mean([r[key] for r in rs]))


def _bytes(n: float) -> str:
    if math.isnan(n):
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def render_markdown(rows: list[dict]) -> str:
    head = ("| method | task | final dev acc (%) | initial | peak client mem (max / mean) | up / client / round | "
            "down / client / round | total bytes | fwd | bwd | wall (s) |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        std = f" +- {100 * r['final_accuracy_std']:.1f}" if r["seeds"] > 1 else ""
        lines.append(
            f"| {r['method']} | {r['task']} | {100 * r['final_accuracy_mean']:.1f}{std} (n={r['seeds']}) | "
            f"{100 * r['initial_accuracy']:.1f} | {_bytes(r['peak_client_mem_max_bytes'])} / "
            f"{_bytes(r['peak_client_mem_mean_bytes'])} | {_bytes(r['uplink_bytes_per_client_round'])} | "
            f"{_bytes(r['downlink_bytes_per_client_round'])} | "
            f"{_bytes(r['uplink_bytes_total'] + r['downlink_bytes_total'])} | {r['forward_passes']:.0f} | "
            f"{r['backward_passes']:.0f} | {r['seconds']:.0f} |"
        )
    notes = [f"- {r['method']} ({r['task']}): {r['note']}" for r in rows if r["note"]]
    return "\n".join(lines + ([""] + notes if notes else [])) + "\n"


def write_tables(results: list[dict], out: Path) -> None:
    rows = summarise(results)
    with (out / "results.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (out / "results.md").write_text(render_markdown(rows))


# --- plots -------------------------------------------------------------------------------------------

def _curves(results: list[dict], task: str, x_key: str) -> dict[str, tuple[list[float], list[float], list[float], int]]:
    """Per method: x, accuracy (%) averaged over seeds at the evaluated rounds (round 0 = zero-shot),
    the half-width of its 95% t-interval over seeds (0 with one seed), and the number of seeds."""
    from scipy import stats

    out: dict[str, list[list[tuple[float, float]]]] = {}
    for r in results:
        if r["task"] == task:
            pts = [(h[x_key], h["dev_accuracy"]) for h in r["history"] if "dev_accuracy" in h]
            out.setdefault(r["method"], []).append(pts)
    curves = {}
    for method, runs in out.items():
        n = min(len(p) for p in runs)
        xs = [float(np.mean([p[i][0] for p in runs])) for i in range(n)]
        accs = np.array([[100 * p[i][1] for i in range(n)] for p in runs])
        half = (stats.t.ppf(0.975, len(runs) - 1) * accs.std(axis=0, ddof=1) / math.sqrt(len(runs))
                if len(runs) > 1 else np.zeros(n))
        curves[method] = (xs, [float(v) for v in accs.mean(axis=0)], [float(v) for v in half], len(runs))
    return curves


_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "*")  # identical curves stay distinguishable


def _figure_legend(fig, axes) -> None:
    """One legend for the figure, outside the axes (it hides no line), with every label of every axis."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)


def write_plots(results: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in results})
    for x_key, name, xlabel, log in (("round", "accuracy_vs_round.png", "round (0 = zero-shot)", False),
                                     ("bytes_total", "accuracy_vs_bytes.png",
                                      "cumulative bytes, all clients, up + down (B, log scale)", True)):
        fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            curves = _curves(results, task, x_key)
            seeds = max((c[3] for c in curves.values()), default=1)
            for k, (method, (xs, ys, half, _)) in enumerate(curves.items()):
                if log:  # zero bytes has no place on a log axis: the zero-shot point is the line below
                    keep = [i for i, x in enumerate(xs) if x > 0]
                    xs, ys, half = [xs[i] for i in keep], [ys[i] for i in keep], [half[i] for i in keep]
                line, = ax.plot(xs, ys, marker=_MARKERS[k % len(_MARKERS)], ms=5, fillstyle="none",
                                ls=("-", "--")[(k // len(_MARKERS)) % 2], label=method)
                if any(half):
                    ax.fill_between(xs, np.subtract(ys, half), np.add(ys, half), color=line.get_color(), alpha=0.12)
            if log:
                zero_shot = 100 * float(np.mean([r["initial_accuracy"] for r in results if r["task"] == task]))
                ax.axhline(zero_shot, color="grey", ls=":", lw=1, label="zero-shot (0 bytes)")
            band = f"mean of {seeds} seeds, 95% band" if seeds > 1 else "one seed"
            ax.set(title=f"{task}: dev accuracy ({band})", xlabel=xlabel, ylabel="dev accuracy (%)",
                   xscale="log" if log else "linear")
            ax.grid(alpha=0.3)
        _figure_legend(fig, axes[0])
        fig.tight_layout()
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
    _memory_plot(summarise(results), tasks, out / "memory.png", plt)


def _memory_plot(rows: list[dict], tasks: list[str], path: Path, plt) -> None:
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rs = [r for r in rows if r["task"] == task and not math.isnan(r["peak_client_mem_max_bytes"])]
        names = [r["method"] for r in rs]
        ax.bar(names, [r["peak_client_mem_max_bytes"] / 2**20 for r in rs], label="largest client", alpha=0.8)
        ax.scatter(names, [r["peak_client_mem_mean_bytes"] / 2**20 for r in rs], color="k", zorder=3, label="client mean")
        ax.set(title=f"{task}: measured peak client memory", xlabel="method", ylabel="peak client memory (MiB)")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    _figure_legend(fig, axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
