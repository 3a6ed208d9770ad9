"""`zorba bench` command: the typer function (registered in zorba.cli)."""

from __future__ import annotations

from pathlib import Path

import typer


def bench(
    config: Path = typer.Option(Path("configs/bench.toml"), help="bench TOML: methods x tasks x seeds"),
    out: Path = typer.Option(Path("runs/bench"), help="output folder; finished cells there are skipped"),
    memory: bool = typer.Option(True, help="measure peak client memory (fresh processes)"),
) -> None:
    """Run baselines and ZorBA side by side; write results.md, results.csv and plots."""
    from zorba.bench import load_bench_config, run_bench

    bench_cfg = load_bench_config(config)
    if not memory:
        bench_cfg = bench_cfg.model_copy(update={"measure_memory": False})
    out.mkdir(parents=True, exist_ok=True)
    run_bench(bench_cfg, out)
    typer.echo(f"wrote {out}/results.md, results.csv and plots")
