"""The study's summary, computed from its committed result.json files only: a table (final dev
accuracy with 95% intervals over seeds, per-example paired differences between every two planners,
rounds to the target) and a plot of the mean dev-accuracy curves with 95% bands, raw and paired with
`all`. `zorba study --summarize-only --out DIR` rewrites both."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import stats

REFERENCE = "all"  # the target is this planner's mean final dev accuracy (budget-blind, all blocks)


def load_cells(out: Path) -> dict[str, list[dict]]:
    """planner -> its per-seed results (sorted by seed), for every planner folder with seeds."""
    cells: dict[str, list[dict]] = {}
    for path in sorted(out.glob("*/seed*/result.json")):
        cells.setdefault(path.parent.parent.name, []).append(json.loads(path.read_text()))
    return {p: sorted(rs, key=lambda r: r["config"]["seed"]) for p, rs in cells.items()}


def curve(result: dict, cost: Callable[[dict], float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(x, dev accuracy) at zero-shot and at every evaluation. x is the round (0 = zero-shot), or with
    `cost` the running sum of cost(round record) up to the evaluation (bytes, client-seconds; 0 at
    zero-shot)."""
    points, spent = [(0.0, result["accuracy"]["initial"])], 0.0
    for h in result["history"]:
        spent += cost(h) if cost else 0.0
        if "dev_accuracy" in h:
            points.append((spent if cost else h["round"] + 1, h["dev_accuracy"]))
    r, a = zip(*points, strict=True)
    return np.array(r, dtype=float), np.array(a)


def interval(values: np.ndarray) -> float:
    """Half-width of the 95% t-interval of the mean (nan for one value)."""
    n = len(values)
    return float(stats.t.ppf(0.975, n - 1) * values.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")


def rounds_to(rounds: np.ndarray, acc: np.ndarray, target: float) -> float | None:
    """First evaluated round whose accuracy reaches the target (None if never)."""
    hit = np.flatnonzero(acc >= target - 1e-12)
    return float(rounds[hit[0]]) if len(hit) else None


def load_tuning(out: Path) -> dict[str, dict[float, float]]:
    """planner -> {lr: its tuning run's validation accuracy (the score the lr is chosen by)}."""
    from zorba.experiments.study import validation_score

    scores: dict[str, dict[float, float]] = {}
    for path in sorted(out.glob("tune/*/lr*/result.json")):
        result = json.loads(path.read_text())
        scores.setdefault(path.parent.parent.name, {})[result["config"]["lr"]] = validation_score(result)[0]
    return scores


def summarize(out: Path) -> dict:
    cells, tuning = load_cells(out), load_tuning(out)
    if not cells and not tuning:
        raise ValueError(f"{out}: no tune/<planner>/lr<x>/ or <planner>/seed<k>/ result.json files")
    curves = {p: [curve(r) for r in rs] for p, rs in cells.items()}
    finals = {p: np.array([a[-1] for _, a in cs]) for p, cs in curves.items()}
    target = float(finals[REFERENCE].mean()) if REFERENCE in finals else None
    rows = {}
    for p, cs in curves.items():
        rounds = cs[0][0]
        mean_acc = np.mean([a for _, a in cs], axis=0)
        rows[p] = {
            "lr": cells[p][0]["config"]["lr"],
            "seeds": [r["config"]["seed"] for r in cells[p]],
            "zero_shot": float(np.mean([a[0] for _, a in cs])),
            "final_mean": float(finals[p].mean()),
            "final_ci95": interval(finals[p]),
            "rounds_to_target_mean_curve": rounds_to(rounds, mean_acc, target) if target is not None else None,
            "rounds_to_target_per_seed": [rounds_to(r, a, target) if target is not None else None for r, a in cs],
            "seconds_mean": float(np.mean([r["seconds"] for r in cells[p]])),
        }
    predictions = load_predictions(out, cells)
    paired = {b: paired_against(predictions, b) for b in cells}  # paired[b][a]: a - b
    for p, test in paired.get(REFERENCE, {}).items():
        rows[p]["paired_vs_reference"] = test
    mark_grid_edges(rows, tuning)
    summary = {"target": target, "reference": REFERENCE, "planners": rows, "claims": claims(rows),
               "paired": {a: {b: paired[b][a] for b in paired if a in paired[b]} for a in cells},
               "tuning_validation_accuracy": {p: {f"{lr:g}": v for lr, v in sorted(s.items())} for p, s in tuning.items()}}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    (out / "summary.md").write_text(render(summary))
    if curves:
        plot(curves, against_reference(cells, curves), target, out / "convergence.png")
    return summary


def load_predictions(out: Path, cells: dict[str, list[dict]]) -> tuple[list[int], dict[str, dict[int, list[int]]]] | None:
    """The dev labels and every run's final per-example dev predictions (planner -> seed -> predictions),
    read once; None when the labels cannot be found (the task's dev.tsv where the runs found their data)."""
    first = next((results[0] for results in cells.values() if results), None)
    labels = dev_labels(first["config"]) if first else None
    if labels is None:
        return None
    runs = {}
    for planner, results in cells.items():
        for r in results:
            path = out / planner / f"seed{r['config']['seed']}" / "predictions.json"
            preds = json.loads(path.read_text()).get("dev_predictions") if path.is_file() else None
            if preds is not None and len(preds) == len(labels):
                runs.setdefault(planner, {})[r["config"]["seed"]] = preds
    return labels, runs


def paired_against(predictions: tuple[list[int], dict] | None, reference: str) -> dict[str, dict]:
    """planner -> "planner - reference" on the seeds both have: McNemar's test pooled over seeds on the
    final per-example dev predictions (significance.pooled_mcnemar); empty without labels."""
    if predictions is None:
        return {}
    from zorba.experiments.significance import pooled_mcnemar

    labels, runs = predictions
    ref = runs.get(reference, {})
    tests = {}
    for p, by_seed in runs.items():
        pairs = [(preds, ref[seed]) for seed, preds in sorted(by_seed.items()) if p != reference and seed in ref]
        if pairs:
            tests[p] = pooled_mcnemar(pairs, labels)
    return tests


def dev_labels(cfg: dict) -> list[int] | None:
    from zorba.core.tasks import get_task, read_examples
    from zorba.errors import UserError
    from zorba.federation.config import RunConfig, find_data_dir

    try:
        run = RunConfig(**{k: v for k, v in cfg.items() if k in RunConfig.model_fields})
        return [e.label for e in read_examples(find_data_dir(run) / run.task / "dev.tsv", get_task(run.task))]
    except (UserError, ValueError, OSError):
        return None


def mark_grid_edges(rows: dict, tuning: dict[str, dict[float, float]]) -> None:
    """Each planner's lr grid as far as its tuning runs went, and whether the chosen lr is its largest
    or smallest value: there the grid, not the method, may have set the step. The values tried, not
    the ones declared: a value added to a grid but not yet run does not make the choice look
    interior."""
    for p, row in rows.items():
        grid = sorted(tuning.get(p, {}))
        row["lr_grid"] = grid
        row["lr_at_grid_edge"] = len(grid) > 1 and row["lr"] in (grid[0], grid[-1])


def default_planner() -> str:
    from zorba.federation.config import RunConfig

    return RunConfig.model_fields["planner"].default


def claims(rows: dict) -> dict:
    """The study's two questions, for the paper's planner (`zorba`) and for the default planner: does it
    reach the target in at most 0.7x the rounds "all" needs (mean curves), and is it ahead of every
    budget-feasible baseline at the final round (mean over seeds)? Answered only once the planner,
    `all` and a baseline have the same seeds: means over different seeds would compare partitions."""
    return {p: c for p in dict.fromkeys(("zorba", default_planner())) if (c := claims_of(rows, p))}


def claims_of(rows: dict, planner: str) -> dict:
    if planner not in rows or REFERENCE not in rows or rows[planner]["seeds"] != rows[REFERENCE]["seeds"]:
        return {}
    z, a = rows[planner]["rounds_to_target_mean_curve"], rows[REFERENCE]["rounds_to_target_mean_curve"]
    trained = rows[REFERENCE]["final_mean"] > rows[REFERENCE]["zero_shot"]  # else there is no progress to time
    ratio = z / a if trained and z is not None and a else None
    feasible = [p for p in rows if p not in (planner, REFERENCE)
                and rows[p]["seeds"] == rows[planner]["seeds"]]
    ahead = {p: rows[planner]["final_mean"] > rows[p]["final_mean"] for p in feasible}
    return {"target_above_zero_shot": trained, "rounds_ratio_over_all": ratio, "faster_by_0.7x": ratio is not None and ratio <= 0.7,
            "ahead_at_final_round": ahead, "ahead_of_every_other_feasible_planner": bool(ahead) and all(ahead.values())}


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _paired(test: dict | None) -> str:
    if not test:
        return "-"
    n = test["seeds"]
    return f"{test['a_minus_b_points']:+.2f} (p = {test['p_value']:.2g}, {n} seed{'s' if n != 1 else ''})"


def render(summary: dict, brief: bool = False) -> str:
    """summary.md; `brief` (for a page that includes it): without the every-pair and tuning tables."""
    tuning = [] if brief else render_tuning(summary.get("tuning_validation_accuracy", {}))
    if not summary["planners"]:
        return "\n".join(["No planner has a seed run yet.", *tuning]) + "\n"
    target = summary["target"]
    lines = [
        f"Target: mean final dev accuracy of `{summary['reference']}` = {_pct(target)}%.",
        "",
        "| planner | seeds | lr (chosen on validation) | final dev acc % (95% CI) | this - all, pts, per-example "
        "paired, seeds pooled (McNemar p) | rounds to target (mean curve) | per seed | wall s / run "
        "(machine shared: not a speed comparison) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    order = sorted(summary["planners"], key=lambda p: -summary["planners"][p]["final_mean"])
    for p in order:
        r = summary["planners"][p]
        per_seed = ", ".join("-" if x is None else f"{x:g}" for x in r["rounds_to_target_per_seed"])
        rt = r["rounds_to_target_mean_curve"]
        edge = " (grid edge)" if r.get("lr_at_grid_edge") else ""
        vs_all = _paired(r.get("paired_vs_reference"))
        lines.append(f"| {p} | {len(r['seeds'])} | {r['lr']:g}{edge} | {_pct(r['final_mean'])} ± {_pct(r['final_ci95'])} | {vs_all} | "
                     f"{'-' if rt is None else f'{rt:g}'} | {per_seed} | {r['seconds_mean']:.0f} |")
    if summary["planners"]:
        zs = np.mean([r["zero_shot"] for r in summary["planners"].values()])
        lines += ["", f"Zero-shot dev accuracy (mean over seeds): {_pct(float(zs))}%."]
    if not brief:
        lines += render_pairs(summary.get("paired", {}), order)
    for p, c in (summary.get("claims") or {}).items():
        ratio = c["rounds_ratio_over_all"]
        if not c["target_above_zero_shot"]:
            timing = "not defined: the target is not above zero-shot (no training progress to time)"
        else:
            timing = f"{p} never reached it" if ratio is None else f"{ratio:.2f}"
        lines += ["", f"Rounds to the target, {p} / all (mean curves): {timing}"
                  f" (goal <= 0.7: {'met' if c['faster_by_0.7x'] else 'not met'}).",
                  (f"{p} ahead at the final round of: " + ", ".join(
                      f"{q} {'yes' if v else 'no'}" for q, v in c["ahead_at_final_round"].items()) + "."
                   if c["ahead_at_final_round"] else "No other budget-feasible planner has run the same seeds yet.")]
    return "\n".join(lines + tuning) + "\n"


def render_pairs(paired: dict[str, dict[str, dict]], order: list[str]) -> list[str]:
    """Every two planners, per-example paired on the seeds both ran: row - column, points (McNemar p)."""
    if not any(paired.values()):
        return []
    lines = ["", "Every two planners, per-example paired over the seeds both ran (pooled McNemar): row - column, "
             "points (p, seeds).", "", "| | " + " | ".join(order) + " |", "|---" * (len(order) + 1) + "|"]
    for a in order:
        cells = []
        for b in order:
            t = paired.get(a, {}).get(b)
            cells.append("" if a == b else "-" if t is None else f"{t['a_minus_b_points']:+.2f} ({t['p_value']:.2g}, {t['seeds']})")
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    return lines


def render_tuning(tuning: dict[str, dict[str, float]]) -> list[str]:
    """The lr grid as run: each planner's validation accuracy per lr (tuning seed; mean of the last
    two evaluations), so a reader sees what the choice rested on."""
    if not tuning:
        return []
    lrs = sorted({lr for s in tuning.values() for lr in s}, key=float)
    lines = ["", "Tuning runs: validation accuracy % (mean of the last two evaluations; the lr is chosen "
             "once every value of a planner's grid has run).", "",
             "| planner | " + " | ".join(f"lr {lr}" for lr in lrs) + " |", "|---|" + "---|" * len(lrs)]
    for p, s in tuning.items():
        lines.append(f"| {p} | " + " | ".join(_pct(s.get(lr)) for lr in lrs) + " |")
    return lines


_MARKERS = ("o", "s", "^", "v", "D", "P", "X", "<", ">", "*")  # identical curves stay distinguishable


def mean_curve(cs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeds' curves -> (mean x, mean accuracy, half-width of the 95% t-interval; 0 with one seed),
    over the evaluations every seed has."""
    n = min(len(a) for _, a in cs)
    xs = np.mean([x[:n] for x, _ in cs], axis=0)
    accs = np.array([a[:n] for _, a in cs])
    half = np.array([interval(accs[:, i]) for i in range(n)]) if len(cs) > 1 else np.zeros(n)
    return xs, accs.mean(axis=0), half


def against_reference(cells: dict[str, list[dict]], curves: dict) -> dict[str, list[tuple[np.ndarray, np.ndarray]]]:
    """planner -> per seed shared with `all`: (round, its dev accuracy minus `all`'s on the same seed).
    The seed (partition, batches) moves every planner alike, so the paired curve shows what the
    planner changes with the seed's share of the spread taken out."""
    if REFERENCE not in cells:
        return {}
    ref = {r["config"]["seed"]: c for r, c in zip(cells[REFERENCE], curves[REFERENCE], strict=True)}
    paired: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    for p, results in cells.items():
        for r, (x, a) in zip(results, curves[p], strict=True):
            if p != REFERENCE and r["config"]["seed"] in ref:
                n = min(len(a), len(ref[r["config"]["seed"]][1]))
                paired.setdefault(p, []).append((x[:n], a[:n] - ref[r["config"]["seed"]][1][:n]))
    return paired


def draw_curves(ax, curves: dict[str, list[tuple[np.ndarray, np.ndarray]]], log: bool = False,
                emphasis: str | None = None, clip: bool = True) -> None:
    """Mean dev accuracy (%) per arm with its 95% band over seeds, drawn within 0-100% unless not `clip`
    (with few seeds a t-interval can pass the bounds; the tables keep it whole). On a log axis the points
    at x = 0 (zero-shot) are left out rather than moved: the caller marks zero-shot as a line."""
    for k, (name, cs) in enumerate(curves.items()):
        if not cs:  # no line, but the next arm keeps its colour and marker
            continue
        xs, mean, half = mean_curve(cs)
        keep = xs > 0 if log else np.ones(len(xs), bool)
        line, = ax.plot(xs[keep], 100 * mean[keep], marker=_MARKERS[k % len(_MARKERS)], ms=4, fillstyle="none",
                        ls=("-", "--")[(k // len(_MARKERS)) % 2], lw=2.2 if name == emphasis else 1.3,
                        label=f"{name} (n={len(cs)})")
        low, high = 100 * (mean - half), 100 * (mean + half)
        if clip:
            low, high = np.clip(low, 0, 100), np.clip(high, 0, 100)
        ax.fill_between(xs[keep], low[keep], high[keep], color=line.get_color(), alpha=0.12)
    if log:
        ax.set_xscale("log")
    ax.grid(alpha=0.3)


def include(summary: dict, out: Path, target_file: Path) -> None:
    """Rewrite the text between the convergence-summary markers of `target_file` with the table and plot."""
    from zorba.experiments.markers import write_between

    image = os.path.relpath(out / "convergence.png", target_file.parent)
    summary_md = os.path.relpath(out / "summary.md", target_file.parent)
    body = render(summary, brief=True) + f"\nEvery pair of planners, paired, and the tuning runs: `{summary_md}`.\n"
    if summary["planners"]:
        body += f"\n![dev accuracy per round, mean and 95% band over seeds]({image})\n"
    write_between(target_file, "convergence-summary", body, f"zorba study --summarize-only --out {out}")


def plot(curves: dict, paired: dict, target: float | None, path: Path) -> None:
    """Left: dev accuracy per round. Right: the same minus `all`'s on the same seed. Colours and
    markers follow the sorted planner names in both panels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8))
    names = sorted(curves)
    draw_curves(ax, {p: curves[p] for p in names}, emphasis=default_planner())
    if target is not None:
        ax.axhline(100 * target, color="grey", ls=":", lw=1, label=f"target: {REFERENCE}'s mean final")
    ax.set_ylabel("dev accuracy (%)")
    ax.set_title("Dev accuracy: mean over seeds, 95% bands")
    # the same colour and marker per planner as on the left; `all` is the zero line
    zero = [(x, np.zeros_like(a)) for x, a in curves.get(REFERENCE, [])]
    draw_curves(bx, {p: zero if p == REFERENCE else paired.get(p, []) for p in names}, emphasis=default_planner(), clip=False)
    bx.set_ylabel(f"dev accuracy minus {REFERENCE}'s, same seed (points)")
    bx.set_title(f"Paired with {REFERENCE} on the seeds both ran: mean, 95% bands")
    for a in (ax, bx):
        a.set_xlabel("round (round 0 = zero-shot)")
    handles, labels = ax.get_legend_handles_labels()
    fig.tight_layout()
    fig.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 0.95))  # outside: hides no line
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
