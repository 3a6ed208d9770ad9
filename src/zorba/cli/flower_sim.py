"""`zorba flower-sim`: the `zorba run` options, run through Flower's simulation engine."""

from __future__ import annotations

from pathlib import Path

import typer

from zorba.cli.options import config_values, training_options
from zorba.flower.settings import FlowerOptions


@training_options(clients="number of clients = simulated SuperNodes [8]")
def flower_sim(
    out: Path = typer.Option(Path("runs/flower"), help="output folder"),
    round_timeout: float = typer.Option(FlowerOptions.round_timeout, help="seconds to wait for a round's reports"),
    actors: int = typer.Option(None, help="Ray workers running ClientApps \\[one per core, at most one per client]"),
    faults: str = typer.Option(FlowerOptions.faults, help="chaos testing: 'crash:CLIENT@ROUND,hang:CLIENT@ROUND:SECONDS'"),
    **options,
) -> None:
    """Run federated ZO fine-tuning as a Flower ServerApp + ClientApps in Flower's simulation engine."""
    from zorba.errors import UserError
    from zorba.federation.config import make_config
    from zorba.flower.faults import parse_faults
    from zorba.flower.simulation import run_flower_simulation

    cfg = make_config(**config_values(options))
    parse_faults(faults)  # fail on a bad spec before Ray starts
    if round_timeout <= 0 or (actors is not None and actors < 1):
        raise UserError("--round-timeout must be positive and --actors at least 1")
    result = run_flower_simulation(cfg, FlowerOptions(round_timeout=round_timeout, faults=faults), out,
                                   overwrite=options["overwrite"], actors=actors)
    acc, comm = result["accuracy"], result["comm"]
    typer.echo(
        f"dev accuracy {100 * acc['initial']:.2f}% -> {100 * acc['final']:.2f}%; uplink "
        f"{comm['uplink_bytes_per_client_round']:.0f} B/client/round vs FedAvg {comm['fedavg_bytes_per_client_round']:,} B; "
        f"wrote {out}/result.json"
    )
