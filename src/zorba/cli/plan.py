"""`zorba plan`: the block-activation plan a planner (the run's default unless --planner) gives at a
round, as a client x block table with per-client memory; for the energy planner (`zorba`) also its
objective, and `--pareto` traces its epsilon-constraint front."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer

from zorba.cli.options import option
from zorba.errors import UserError
from zorba.memory.profiles import MIB


def _setup(model: str, clients: int, profiles: Path | None, memory_model: Path | None, **options):
    from zorba.federation.config import make_config
    from zorba.federation.runner import client_memory_model, client_profiles, load_run_model, make_planner

    cfg = make_config(model=model, clients=clients, profiles=str(profiles) if profiles else None,
                      memory_model=str(memory_model) if memory_model else None, **options)
    lm = load_run_model(cfg)
    mem = client_memory_model(cfg, lm)
    profs = client_profiles(cfg, mem)
    return cfg, lm, mem, profs, make_planner(cfg, lm, profs, mem)


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
    model: str = option("model"),
    clients: int = option("clients"),
    profiles: Path = option("profiles"),
    memory_model: Path = option("memory_model"),
    planner: str = option("planner"),
    round_idx: int = typer.Option(0, "--round", min=0, help="the round to plan (planners that rotate or redraw differ by round)"),
    seed: int = option("seed"),
    memory_cap_mib: float = option("memory_cap_mib"),
    pareto: bool = typer.Option(False, help="zorba planner: sweep epsilon (total memory) and write the front"),
    points: int = typer.Option(8, help="points on the Pareto front"),
    out: Path = typer.Option(Path("runs/plan"), help="folder for the Pareto table and plot"),
) -> None:
    """Print the plan a planner gives at a round (for `zorba`: block energies proportional to size, as
    before any client reports): client x block activation (a client with no row sits the round out),
    per-client memory, and for `zorba` its objective Phi (docs/theory.md A4)."""
    from zorba.planner.energy import EnergyPlanner, NoFeasiblePlan

    cfg, lm, mem, profs, chosen = _setup(model, clients, profiles, memory_model, memory_cap_mib=memory_cap_mib,
                                         planner=planner, seed=seed)
    if pareto and not isinstance(chosen, EnergyPlanner):
        raise UserError(f"--pareto traces the zorba planner's epsilon-constraint front; planner {cfg.planner!r} has none")
    ids = list(range(cfg.clients))
    try:
        given = chosen.plan(round_idx, ids)
    except NoFeasiblePlan as exc:
        raise UserError(str(exc)) from None
    A = np.zeros((cfg.clients, len(lm.blocks)))
    for c, blocks in given.items():
        A[c, list(blocks)] = 1.0
    head = f"plan of planner {cfg.planner!r}, round {round_idx}: total memory {mem.client_memory(A).sum() / MIB:.1f} MiB"
    if isinstance(chosen, EnergyPlanner):
        energy = chosen.energy.estimate()
        phi = sum(chosen.rule.scale(b) * energy[list(b)].sum() for b in given.values())
        head += f", Phi = {phi:.4g} (energies proportional to block size)"
    typer.echo(head)
    typer.echo(_table(lm, profs, mem, A))
    if pareto:
        _write_pareto(chosen, ids, out, points)


def _write_pareto(planner, ids: list[int], out: Path, points: int) -> None:
    from zorba.planner.energy import pareto_front

    front = pareto_front(planner.candidates(ids), points)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["| eps (MiB) | total memory (MiB) | Phi | active blocks |", "|---|---|---|---|"]
    lines += [f"| {p.eps / MIB:.1f} | {p.total_memory / MIB:.1f} | {p.progress:.4g} | {sum(map(len, p.sets))} |"
              for p in front]
    (out / "pareto.md").write_text("\n".join(lines) + "\n")
    _plot_front(front, out / "pareto.png")
    typer.echo("\n".join(lines))
    typer.echo(f"wrote {out / 'pareto.md'} and {out / 'pareto.png'}")


def _plot_front(front, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot([p.total_memory / MIB for p in front], [p.progress for p in front], marker="o")
    ax.set(xlabel="total client memory (MiB)", ylabel="expected progress Phi (energy units)",
           title="epsilon-constraint front")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
