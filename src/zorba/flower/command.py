"""`zorba flower-sim`: the `zorba run` options, run through Flower's simulation engine."""

from __future__ import annotations

from pathlib import Path

import typer


def flower_sim(
    task: str = typer.Option("sst2", help="sst2 or rte"),
    model: str = typer.Option("minilm", help="HF model id or local folder; 'minilm' = embedded default"),
    clients: int = typer.Option(None, help="number of clients = simulated SuperNodes [8]"),
    rounds: int = typer.Option(None, help="federated rounds [30]"),
    local_steps: int = typer.Option(None, help="local ZO steps per round [5]"),
    lr: float = typer.Option(None, help="learning rate"),
    mu: float = typer.Option(None, help="perturbation scale"),
    q: int = typer.Option(None, help="perturbations per step [1]"),
    batch_size: int = typer.Option(None, help="mini-batch size [16]"),
    max_len: int = typer.Option(None, help="max tokens per example [64]"),
    alpha: float = typer.Option(None, help="Dirichlet label-skew concentration [0.5]"),
    planner: str = typer.Option(None, help="zorba | all | random | round-robin"),
    dist: str = typer.Option(None, help="perturbation distribution: rademacher | gaussian"),
    participation: float = typer.Option(None, help="fraction of clients per round [1.0]"),
    train_size: int = typer.Option(None, help="subsample the training split to this many examples"),
    eval_every: int = typer.Option(None, help="evaluate on dev every this many rounds"),
    seed: int = typer.Option(None, help="run seed: every random choice derives from it"),
    data_dir: Path = typer.Option(None, help="folder with <task>/train.tsv and dev.tsv"),
    out: Path = typer.Option(Path("runs/flower"), help="output folder"),
    overwrite: bool = typer.Option(False, help="replace an existing output folder"),
    measure_memory: bool = typer.Option(True, help="measure each client's peak memory in a fresh process"),
    round_timeout: float = typer.Option(600.0, help="seconds to wait for a round's reports"),
    actors: int = typer.Option(None, help="Ray workers running ClientApps [one per core, at most one per client]"),
    faults: str = typer.Option("", help="chaos testing: 'crash:CLIENT@ROUND,hang:CLIENT@ROUND:SECONDS'"),
) -> None:
    """Run federated ZO fine-tuning as a Flower ServerApp + ClientApps in Flower's simulation engine."""
    from zorba.config import make_config
    from zorba.errors import UserError
    from zorba.flower.faults import parse_faults
    from zorba.flower.settings import FlowerOptions
    from zorba.flower.simulation import run_flower_simulation

    cfg = make_config(
        task=task, model=model, clients=clients, rounds=rounds, local_steps=local_steps, lr=lr, mu=mu, q=q,
        batch_size=batch_size, max_len=max_len, alpha=alpha, planner=planner, dist=dist,
        participation=participation, train_size=train_size, eval_every=eval_every, seed=seed,
        data_dir=str(data_dir) if data_dir else None, measure_memory=measure_memory,
    )
    parse_faults(faults)  # fail on a bad spec before Ray starts
    if round_timeout <= 0 or (actors is not None and actors < 1):
        raise UserError("--round-timeout must be positive and --actors at least 1")
    result = run_flower_simulation(cfg, FlowerOptions(round_timeout=round_timeout, faults=faults), out,
                                   overwrite=overwrite, actors=actors)
    acc, comm = result["accuracy"], result["comm"]
    typer.echo(
        f"dev accuracy {100 * acc['initial']:.2f}% -> {100 * acc['final']:.2f}%; uplink "
        f"{comm['uplink_bytes_per_client_round']:.0f} B/client/round vs FedAvg {comm['fedavg_bytes_per_client_round']:,} B; "
        f"wrote {out}/result.json"
    )
