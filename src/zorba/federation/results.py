"""A run's outputs: result.json, report.md, plot.png, log.jsonl and the final weights (safetensors,
loadable with from_pretrained). `zorba verify` lives in verify.py."""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from zorba.core import rng_native
from zorba.core.replica import Replica
from zorba.federation.export import save_model
from zorba.federation.outdir import write_marker
from zorba.wire.logio import write_log

_PACKAGES = ("zorba", "torch", "transformers", "numpy", "scipy", "flwr", "flwr-datasets", "peft")


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    # Same bits either way; recorded so a timing can be read against the path that produced it.
    out["cpu_perturbation"] = "compiled loop" if rng_native.usable() else f"torch path ({rng_native.why_off()})"
    return out


def write_outputs(tmp: Path, result: dict, server_replica: Replica, log) -> None:
    write_marker(tmp)
    write_log(tmp / "log.jsonl", log)
    save_model(server_replica.lm, tmp / "model")
    (tmp / "result.json").write_text(json.dumps(result, indent=2))
    plot_history(result["history"], tmp / "plot.png", result.get("accuracy", {}).get("initial"))
    (tmp / "report.md").write_text(render_report(result))


def plot_history(history: list[dict], path: Path, initial_accuracy: float | None = None) -> None:
    """Training loss per round and dev accuracy per evaluation; round r's point is drawn at r + 1 (after
    it), and the zero-shot accuracy, when given, at round 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax1.plot([h["round"] + 1 for h in history], [h["train_loss"] for h in history], marker=".")
    ax1.set(xlabel="round", ylabel="training loss (clients' mean cross-entropy)", title="training loss")
    evals = [(h["round"] + 1, h["dev_accuracy"]) for h in history if "dev_accuracy" in h]
    if initial_accuracy is not None:
        evals = [(0, initial_accuracy), *evals]
    ax2.plot([r for r, _ in evals], [100 * a for _, a in evals], marker="o")
    ax2.set(xlabel="round (0 = zero-shot)" if initial_accuracy is not None else "round",
            ylabel="dev accuracy (%)", title="dev accuracy (one run)")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _steps(c: dict) -> str:
    steps = f"{c['local_steps']} local steps"
    if c.get("planner") == "head" and c.get("head_steps"):
        steps += f" ({c['head_steps']} for a client that trains the label head alone, on {c['head_pool']} examples)"
    return steps


def render_report(r: dict) -> str:
    c = r["config"]
    lines = [
        f"# zorba run: {r['method']} on {r['task']} with {r['model']}",
        "",
        f"{c['clients']} clients, {c['rounds']} rounds x {_steps(c)}, planner `{c['planner']}`, "
        f"lr {c['lr']}, mu {c['mu']}, q {c['q']}, batch {c['batch_size']}, seed {c['seed']}.",
        "",
        "| metric | initial | final |",
        "|---|---|---|",
        f"| dev accuracy | {100 * r['accuracy']['initial']:.2f}% | {100 * r['accuracy']['final']:.2f}% |",
    ]
    sig = r.get("dev_significance")
    if sig:
        verdict = "better than zero-shot" if sig["p_value"] < 0.01 and sig["gain_points"] > 0 else "not shown better"
        lines.append(f"| McNemar vs zero-shot (dev, {sig['examples']} paired) | | {sig['gain_points']:+.2f} pts, "
                     f"{sig['wrong_to_right']} fixed / {sig['right_to_wrong']} broken, p = {sig['p_value']:.2g}: "
                     f"{verdict} at 0.01 |")
    if r.get("test_file_accuracy"):
        t = r["test_file_accuracy"]
        lines.append(f"| test-file accuracy | {100 * t['initial']:.2f}% | {100 * t['final']:.2f}% |")
    comm, mem = r["comm"], r["memory"]
    lines += [
        "",
        f"- uplink per client per round: {comm['uplink_bytes_per_client_round']:.0f} bytes; "
        f"downlink: {comm['downlink_bytes_per_client_round']:.0f} bytes "
        f"(FedAvg would send {comm['fedavg_bytes_per_client_round']:,} bytes each way)",
        f"- wall time: {r['seconds']:.1f} s ({r['seconds'] / max(c['rounds'], 1):.2f} s per round)",
    ]
    if mem.get("peak_bytes_per_client"):
        peaks = ", ".join(f"{b / 2**20:.0f}" for b in mem["peak_bytes_per_client"])
        lines.append(f"- measured peak memory per client (MiB, fresh process each): {peaks}")
    lines += _budget_lines(mem)
    lines += ["", "![loss and accuracy](plot.png)", ""]
    return "\n".join(lines)


def _budget_lines(mem: dict) -> list[str]:
    """The clients' budgets against the planner's memory model, and against the measured peaks when
    the model is calibrated (results of earlier versions have no budgets: nothing to say)."""
    if not mem.get("budget_bytes_per_client"):
        return []
    mib = lambda xs: ", ".join(f"{x / 2**20:.0f}" for x in xs)  # noqa: E731
    lines = [f"- budget per client (MiB): {mib(mem['budget_bytes_per_client'])}; "
             f"memory model's prediction for its largest planned block set: {mib(mem['predicted_bytes_per_client'])} "
             f"({mem['memory_model']})"]
    if mem.get("predicted_over_budget_clients"):
        lines.append(f"- **planned over budget** by the memory model's prediction: clients "
                     f"{mem['predicted_over_budget_clients']} (a budget-blind planner, e.g. --planner all)")
    ok = mem.get("within_budget")
    if ok is not None:
        planned = [x for x in ok if x is not None]
        lines.append(f"- measured peak within budget: {sum(planned)} of {len(planned)} clients")
    elif mem.get("peak_bytes_per_client"):
        lines.append("- measured peak against budget: not checked (budgets in model bytes, no runtime measured)")
    return lines


from zorba.federation.verify import verify  # noqa: E402,F401  (re-exported for callers that import it from here)
