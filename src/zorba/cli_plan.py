"""`zorba plan`: the block-activation plan the server would choose, as a client x block table with
per-client memory and the bound; `--pareto` traces the epsilon-constraint front (table + PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from zorba.errors import UserError
from zorba.profiles import MIB


def _setup(model: str, clients: int, profiles: Path | None, memory_model: Path | None, **hyper):
    from zorba.config import make_config
    from zorba.models import load_model
    from zorba.planner import PlanInfeasible, make_zorba_planner
    from zorba.runner import client_memory_model, client_profiles

    cfg = make_config(model=model, clients=clients, profiles=str(profiles) if profiles else None,
                      memory_model=str(memory_model) if memory_model else None, **hyper)
    lm = load_model(cfg.model)
    mem = client_memory_model(cfg, lm)
    profs = client_profiles(cfg, mem)
    try:
        planner = make_zorba_planner(cfg, lm, profs, mem)
    except PlanInfeasible as exc:
        raise UserError(str(exc)) from None
    return cfg, lm, mem, profs, planner


def _table(lm, profs, mem, A: np.ndarray) -> str:
    names = [b.name.replace("layer.", "L") for b in lm.blocks]
    width = max(len(n) for n in names) + 1
    head = f"{'client':<18}" + "".join(f"{n:>{width}}" for n in names) + f"{'memory MiB':>12}{'budget MiB':>12}"
    rows = [head]
    used = mem.client_memory(A)
    for n, p in enumerate(profs):
        cells = "".join(f"{'#' if A[n, b] else '.':>{width}}" for b in range(A.shape[1]))
        rows.append(f"{f'{n} {p.name}':<18}{cells}{used[n] / MIB:>12.1f}{p.memory_bytes / MIB:>12.1f}")
    rows.append(f"{'coverage':<18}" + "".join(f"{int(c):>{width}}" for c in A.sum(axis=0)))
    return "\n".join(rows)


def plan(
    model: str = typer.Option("minilm", help="HF model id or folder; 'minilm' = embedded default"),
    clients: int = typer.Option(8, help="number of clients"),
    profiles: Path = typer.Option(None, help="TOML of client memory budgets and speeds"),
    memory_model: Path = typer.Option(None, help="calibration JSON from `zorba profile-memory`"),
    lr: float = typer.Option(5e-5), local_steps: int = typer.Option(5), q: int = typer.Option(1),
    rounds: int = typer.Option(30),
    pareto: bool = typer.Option(False, help="sweep epsilon (total memory) and write the front"),
    points: int = typer.Option(8, help="points on the Pareto front"),
    out: Path = typer.Option(Path("runs/plan"), help="folder for the Pareto table and plot"),
) -> None:
    """Print the planned client x block activation with per-client memory and the bound."""
    cfg, lm, mem, profs, planner = _setup(model, clients, profiles, memory_model, lr=lr, local_steps=local_steps,
                                          q=q, rounds=rounds)
    planner.plan(0, list(range(cfg.clients)))
    sched = planner.schedule
    for r, p in enumerate(sched.plans):
        title = f"plan {r + 1} of a window of {sched.window}" if sched.window > 1 else "plan"
        typer.echo(f"{title} (solver {p.solver}, {p.seconds:.2f} s): bound J = {p.bound:.6g}, "
                   f"total memory {p.total_memory / MIB:.1f} MiB")
        typer.echo(_table(lm, profs, mem, p.A))
    if sched.window > 1:
        typer.echo(f"window bound J = {sched.bound:.6g} (no single plan fits every block in the budgets)")
    if pareto:
        _write_pareto(planner, mem, out, points)


def _write_pareto(planner, mem, out: Path, points: int) -> None:
    from zorba.planner import PlanInfeasible, pareto_front

    try:
        front = pareto_front(planner.consts, mem, planner.budgets, n_points=points)
    except PlanInfeasible as exc:
        raise UserError(f"no Pareto front: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| eps (MiB) | total memory (MiB) | bound J | active blocks |", "|---|---|---|---|"]
    lines += [f"| {p.eps / MIB:.1f} | {p.total_memory / MIB:.1f} | {p.bound:.6g} | {int(p.A.sum())} |" for p in front]
    (out / "pareto.md").write_text("\n".join(lines) + "\n")
    _plot_front(front, out / "pareto.png")
    typer.echo("\n".join(lines))
    typer.echo(f"wrote {out / 'pareto.md'} and {out / 'pareto.png'}")


def _plot_front(front, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot([p.total_memory / MIB for p in front], [p.bound for p in front], marker="o")
    ax.set(xlabel="total client memory (MiB)", ylabel="convergence bound J", title="epsilon-constraint front")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
