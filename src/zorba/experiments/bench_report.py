"""The bench's summary, computed from its files only: `bench.json`, the seed and tuning cells'
`result.json` and `memory/*.json`. Per task: final dev accuracy (mean and 95% t-interval over
seeds), rounds and client-seconds to the target accuracy, bytes per client per round, client peak
memory against the device classes' budgets and how many clients each row could use, and the lr grid
each row was tuned over with its validation scores; plots with 95% bands over seeds.
`zorba bench --summarize-only --out DIR` rewrites summary.md, summary.json and the plots;
`--include-in FILE` also copies the tables between FILE's bench-summary markers."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np

from zorba.experiments.markers import write_between
from zorba.experiments.study import validation_score
from zorba.experiments.study_report import curve, draw_curves, interval, mean_curve, rounds_to

BEGIN, END = "<!-- bench-summary:begin -->", "<!-- bench-summary:end -->"
MIB = 2**20
PLOTS = ("accuracy_vs_round.png", "accuracy_vs_bytes.png", "accuracy_vs_client_seconds.png", "memory.png")


def _bytes_spent(h: dict) -> float:
    return h["clients"] * (h["uplink_bytes_per_client"] + h["downlink_bytes_per_client"])


def _client_seconds(h: dict) -> float:
    return h["client_seconds"]


def _results(out: Path, pattern: str, leaf: str) -> list[dict]:
    """Every finished cell matching `pattern` whose folder name matches `leaf` (partial cells are not)."""
    return [json.loads(p.read_text()) for p in sorted(out.glob(pattern)) if re.fullmatch(leaf, p.parent.name)]


def load(out: Path) -> dict:
    """Everything the summary reads, keyed by (task, row label)."""
    record = json.loads((out / "bench.json").read_text()) if (out / "bench.json").is_file() else {}
    seeds: dict[tuple[str, str], list[dict]] = {}
    for r in _results(out, "*/*/seed*/result.json", r"seed\d+"):
        seeds.setdefault((r["task"], r["label"]), []).append(r)
    tuning: dict[tuple[str, str], list[dict]] = {}
    for r in _results(out, "tune/*/*/lr*/result.json", r"lr[0-9.e+-]+"):
        tuning.setdefault((r["task"], r["label"]), []).append(r)
    memory = {(m["task"], m["label"]): m for m in (json.loads(p.read_text()) for p in sorted(out.glob("memory/*/*.json")))}
    return {"record": record, "seeds": {k: sorted(v, key=lambda r: r["config"]["seed"]) for k, v in seeds.items()},
            "tuning": tuning, "memory": memory}


def _row_order(data: dict) -> tuple[list[str], list[str]]:
    """Tasks and row labels in the config's order (then anything else found in the files)."""
    from zorba.experiments.bench import BenchConfig

    record, found = data["record"], set(data["seeds"]) | set(data["tuning"]) | set(data["memory"])
    tasks, labels = list(record.get("tasks", [])), []
    if record:
        labels = [r.label for r in BenchConfig.model_validate(record).rows()]
    tasks += sorted({t for t, _ in found} - set(tasks))
    labels += sorted({lb for _, lb in found} - set(labels))
    return tasks, labels


def _tuning_rows(runs: list[dict], chosen: float | None) -> list[dict]:
    out = []
    for r in sorted(runs, key=lambda r: r["config"]["lr"]):
        acc, neg_loss = validation_score(r)
        out.append({"lr": r["config"]["lr"], "validation_accuracy": acc, "validation_loss": -neg_loss,
                    "chosen": r["config"]["lr"] == chosen})
    return out


def _peaks(mem: dict | None, used: list[int]) -> tuple[float | None, float | None, int | None]:
    """(largest, mean) measured peak over the clients used (over all, for a row that could use none),
    and for how many clients of the federation the budget holds the measured peak."""
    if not mem:
        return None, None, None
    section = mem["memory"]
    ids = used or range(len(section["peak_bytes_per_client"]))
    peaks = [section["peak_bytes_per_client"][c] for c in ids if section["peak_bytes_per_client"][c]]
    within = len(mem["clients_within_budget"]) if section.get("within_budget") is not None else None
    return (float(max(peaks)), float(np.mean(peaks)), within) if peaks else (None, None, within)


def _row(label: str, runs: list[dict], tuning: list[dict], mem: dict | None, target: float | None) -> dict:
    first = (runs or tuning or [{}])[0]
    clients = mem["clients"] if mem else first.get("config", {}).get("clients")
    used = mem["clients_used"] if mem else first.get("clients_used", list(range(clients or 0)))
    peak_max, peak_mean, within = _peaks(mem, used)
    row = {"label": label, "method": (mem or first).get("method"), "equal_memory": (mem or first).get("equal_memory", False),
           "clients": clients, "clients_used": len(used), "peak_bytes_max": peak_max, "peak_bytes_mean": peak_mean,
           "clients_within_budget": within, "seeds": [r["config"]["seed"] for r in runs],
           "frozen_precision": first.get("frozen_precision", "-"),
           "lr": runs[0]["config"]["lr"] if runs else None,
           "lr_grid": _tuning_rows(tuning, runs[0]["config"]["lr"] if runs else None)}
    if not runs:
        row["status"] = ("not run: no client's budget holds the measured peak" if mem and not used
                         else "not run yet")
        return row
    by_round = [curve(r) for r in runs]
    finals = np.array([a[-1] for _, a in by_round])
    rounds, acc, _ = mean_curve(by_round)
    seconds, acc_s, _ = mean_curve([curve(r, _client_seconds) for r in runs])
    row.update(
        status="ran",
        zero_shot=float(np.mean([a[0] for _, a in by_round])),
        final_mean=float(finals.mean()), final_ci95=interval(finals), finals=[float(f) for f in finals],
        rounds_to_target_mean_curve=rounds_to(rounds, acc, target) if target is not None else None,
        rounds_to_target_per_seed=[rounds_to(x, a, target) if target is not None else None for x, a in by_round],
        client_seconds_to_target_mean_curve=rounds_to(seconds, acc_s, target) if target is not None else None,
        uplink_bytes_per_client_round=float(np.mean([r["comm"]["uplink_bytes_per_client_round"] for r in runs])),
        downlink_bytes_per_client_round=float(np.mean([r["comm"]["downlink_bytes_per_client_round"] for r in runs])),
        forward_passes=float(np.mean([r["passes"]["forward"] for r in runs])),
        backward_passes=float(np.mean([r["passes"]["backward"] for r in runs])),
        client_seconds_mean=float(np.mean([r["client_seconds"] for r in runs])),
        seconds_mean=float(np.mean([r["seconds"] for r in runs])),
        rounds=runs[0]["config"]["rounds"], dev_examples=runs[0]["dev_examples"],
    )
    return row


def _cost(data: dict, task: str) -> dict:
    """What the finished cells took, by their own `seconds` (training and evaluation; process start-up
    and memory probes not counted). The tune_seed's seed cell is a copy of its tuning run: counted once."""
    tune_seed = data["record"].get("tune_seed", 0)
    runs = [r for (t, _), rs in data["tuning"].items() if t == task for r in rs]
    runs += [r for (t, _), rs in data["seeds"].items() if t == task for r in rs if r["config"]["seed"] != tune_seed]
    probes = [m.get("seconds") for (t, _), m in data["memory"].items() if t == task]
    return {"runs": len(runs), "seconds": float(sum(r["seconds"] for r in runs)), "jobs": data["record"].get("jobs", 1),
            "probe_seconds": float(sum(probes)) if probes and None not in probes else None}


def _probe_cost(seconds: float | None) -> str:
    # Records written before probes were timed carry no `seconds`: say so rather than count them as 0.
    return "memory probes not timed" if seconds is None else f"plus {seconds / 60:.0f} min of memory probes, one at a time"


def _budgets(memory: dict, task: str) -> list[tuple[str, float]]:
    """The device classes' budgets on `task` (process bytes), largest first."""
    for (t, _), m in memory.items():
        if t == task:
            section = m["memory"]
            pairs = dict(zip(section["profile_per_client"], section["budget_bytes_per_client"], strict=True))
            return sorted(pairs.items(), key=lambda kv: -kv[1])
    return []


def summarize(out: Path, reference: str | None = None) -> dict:
    """summary.json, summary.md and the plots under `out`, from its files only."""
    data = load(out)
    if not data["seeds"] and not data["memory"]:
        raise ValueError(f"{out}: no <task>/<row>/seed<k>/result.json files")
    tasks, labels = _row_order(data)
    reference = reference or data["record"].get("reference")
    summary: dict = {"reference": reference, "tasks": {}}
    for task in tasks:
        ref_runs = data["seeds"].get((task, reference), [])
        ref_curves = [curve(r) for r in ref_runs]
        target = float(np.mean([a[-1] for _, a in ref_curves])) if ref_curves else None
        ref_zero_shot = float(np.mean([a[0] for _, a in ref_curves])) if ref_curves else None
        defined = target is not None and target > ref_zero_shot
        rows = [_row(label, data["seeds"].get((task, label), []), data["tuning"].get((task, label), []),
                     data["memory"].get((task, label)), target if defined else None)
                for label in labels]
        summary["tasks"][task] = {
            "target": target, "target_above_zero_shot": defined,
            "cost": _cost(data, task),
            "budgets": [{"class": name, "bytes": b} for name, b in _budgets(data["memory"], task)],
            "rows": rows,
        }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(render(summary))
    plot(data, summary, out)
    return summary


# --- Markdown ------------------------------------------------------------------------------------------

def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _size(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "-"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n:.0f} B"


def _num(x: float | None, fmt: str = "{:g}") -> str:
    return "-" if x is None else fmt.format(x)


def render(summary: dict, images: str = "") -> str:
    """The tables; `images` is the plots' folder relative to where the text is read."""
    ref = summary["reference"]
    lines = []
    for task, t in summary["tasks"].items():
        ran = [r for r in t["rows"] if r["status"] == "ran"]
        if t["target"] is None:
            target = "no target (the reference row has no finished seeds)" if ref else "no reference row chosen"
        else:
            target = f"mean final dev accuracy of `{ref}` = {_pct(t['target'])}%"
            if not t["target_above_zero_shot"]:
                target += " (not above its zero-shot accuracy: no progress to time, rounds to target not defined)"
        dev = ran[0]["dev_examples"] if ran else "-"
        budgets = ", ".join(f"{b['class']} {_size(b['bytes'])}" for b in t["budgets"]) or "not measured"
        cost = t["cost"]
        lines += [
            f"### {task}", "",
            f"{dev} dev examples; target: {target}. Client budgets (process bytes): {budgets}. "
            f"Finished runs: {cost['runs']}, {cost['seconds'] / 3600:.1f} h of run time by their `seconds` "
            f"({cost['jobs']} at a time, the config's jobs: about {cost['seconds'] / 3600 / cost['jobs']:.1f} h), "
            f"{_probe_cost(cost['probe_seconds'])}; process start-up not counted.", "",
            "| method | clients used | lr | final dev acc % (95% CI) | seeds | zero-shot % | rounds to target "
            "(mean curve; per seed) | client-s to target (mean curve) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in t["rows"]:
            used = f"{r['clients_used']} / {r['clients']}" if r["clients"] is not None else "-"
            if r["status"] != "ran":
                lines.append(f"| {r['label']} | {used} | - | {r['status']} | 0 | - | - | - |")
                continue
            per_seed = ", ".join(_num(x) for x in r["rounds_to_target_per_seed"])
            ci = "-" if math.isnan(r["final_ci95"]) else _pct(r["final_ci95"])
            lines.append(
                f"| {r['label']} | {used} | {r['lr']:g} | {_pct(r['final_mean'])} ± {ci} | {len(r['seeds'])} | "
                f"{_pct(r['zero_shot'])} | {_num(r['rounds_to_target_mean_curve'])}; {per_seed} | "
                f"{_num(r['client_seconds_to_target_mean_curve'], '{:.0f}')} |")
        lines += [
            "", "| method | frozen weights | up / client / round | down / client / round | client peak, max / mean (process, "
            "loading incl.) | clients whose budget holds it | forward / backward passes | client-s / run | wall s / run |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in ran:  # a row that did not run has its reason in the first table and its peak in its method's row
            within = "-" if r["clients_within_budget"] is None else f"{r['clients_within_budget']} / {r['clients']}"
            peak = f"{_size(r['peak_bytes_max'])} / {_size(r['peak_bytes_mean'])}"
            lines.append(
                f"| {r['label']} | {r['frozen_precision']} | {_size(r['uplink_bytes_per_client_round'])} | {_size(r['downlink_bytes_per_client_round'])} | "
                f"{peak} | {within} | {r['forward_passes']:.0f} / {r['backward_passes']:.0f} | "
                f"{r['client_seconds_mean']:.0f} | {r['seconds_mean']:.0f} |")
        lines += ["", "Step sizes, chosen on the validation split (mean validation accuracy of the last two "
                  "evaluations, then the lower final validation loss; dev is not read):", "",
                  "| method | lr grid: validation acc % / loss (chosen in bold) |", "|---|---|"]
        for r in t["rows"]:
            if r["lr_grid"]:
                grid = ", ".join((f"**{g['lr']:g}: {_pct(g['validation_accuracy'])} / {g['validation_loss']:.3f}**" if g["chosen"]
                                  else f"{g['lr']:g}: {_pct(g['validation_accuracy'])} / {g['validation_loss']:.3f}")
                                 for g in r["lr_grid"])
                lines.append(f"| {r['label']} | {grid} |")
        lines.append("")
    lines += [
        "`(equal memory)` rows admit only the clients whose budget holds the method's measured peak; zorba "
        "plans into the budgets and its measured peaks are checked against them. Rounds and client-seconds to "
        "target are read off the mean curve over seeds; client-seconds add each client's compute time (a cost, "
        "not a latency). Wall times come from a shared machine and compare nothing.", "",
    ]
    lines += [f"![{name.removesuffix('.png').replace('_', ' ')}]({images}{name})" for name in PLOTS]
    return "\n".join(lines) + "\n"


def include(summary: dict, out: Path, target_file: Path) -> None:
    """Rewrite the text between the bench-summary markers of `target_file` with the tables."""
    images = os.path.relpath(out, target_file.parent) + "/"
    write_between(target_file, "bench-summary", render(summary, images), f"zorba bench --summarize-only --out {out}")


# --- plots ---------------------------------------------------------------------------------------------

def _figure_legend(fig, axes) -> None:
    """One legend for the figure, outside the axes (it hides no line), with every label of every axis."""
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.legend(list(seen.values()), list(seen), loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)


def plot(data: dict, summary: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    tasks = list(summary["tasks"])
    ref = summary["reference"]
    kinds = (("accuracy_vs_round.png", None, "round (0 = zero-shot)", False),
             ("accuracy_vs_bytes.png", _bytes_spent, "bytes sent and received, all clients, cumulative (B, log scale)", True),
             ("accuracy_vs_client_seconds.png", _client_seconds, "client compute, all clients, cumulative (s)", False))
    for name, cost, xlabel, log in kinds:
        fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.4), squeeze=False)
        for ax, task in zip(axes[0], tasks, strict=True):
            t = summary["tasks"][task]
            curves = {r["label"]: [curve(c, cost) for c in data["seeds"][(task, r["label"])]]
                      for r in t["rows"] if r["status"] == "ran"}
            draw_curves(ax, curves, log=log, emphasis="zorba")
            if log and curves:  # the zero-shot point sits at 0 bytes, which a log axis cannot show
                zero_shot = np.mean([a[0] for cs in curves.values() for _, a in cs])
                ax.axhline(100 * zero_shot, color="grey", ls=":", lw=1, label="zero-shot (0 bytes)")
            if t["target"] is not None:
                ax.axhline(100 * t["target"], color="k", ls="--", lw=0.8, label=f"target: {ref}'s mean final")
            if cost is None:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            seeds = max((len(cs) for cs in curves.values()), default=0)
            ax.set(title=f"{task}: dev accuracy, mean of {seeds} seeds, 95% bands", xlabel=xlabel, ylabel="dev accuracy (%)")
        _figure_legend(fig, axes[0])
        fig.tight_layout()
        fig.savefig(out / name, dpi=110, bbox_inches="tight")
        plt.close(fig)
    _memory_plot(summary, tasks, out / "memory.png", plt)


def _memory_plot(summary: dict, tasks: list[str], path: Path, plt) -> None:
    fig, axes = plt.subplots(1, len(tasks), figsize=(6.5 * len(tasks), 4.6), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        t = summary["tasks"][task]
        rows = [r for r in t["rows"] if r["peak_bytes_max"] is not None and not r["equal_memory"]]
        names = [r["label"] for r in rows]
        ax.bar(names, [r["peak_bytes_max"] / MIB for r in rows], alpha=0.8, label="largest client's peak")
        ax.scatter(names, [r["peak_bytes_mean"] / MIB for r in rows], color="k", zorder=3, label="mean over clients")
        for k, b in enumerate(t["budgets"]):
            ax.axhline(b["bytes"] / MIB, color=f"C{k + 1}", ls="--", lw=1, label=f"budget: {b['class']}")
        ax.set(title=f"{task}: measured client peak (process, loading included)", xlabel="method",
               ylabel="peak client memory (MiB)")
        ax.tick_params(axis="x", rotation=60, labelsize=7)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    _figure_legend(fig, axes[0])
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
