"""`zorba bench` command: the typer function (registered in zorba.cli.app)."""

from __future__ import annotations

from pathlib import Path

import typer


def bench(
    config: Path = typer.Option(Path("configs/bench.toml"), help="bench TOML: methods x lr grid x tasks x seeds"),
    out: Path = typer.Option(Path("runs/bench"), help="output folder; finished cells there are skipped"),
    memory: bool = typer.Option(True, help="measure client peak memory (fresh processes); off: no equal-memory rows"),
    summarize_only: bool = typer.Option(False, "--summarize-only", help="only rewrite summary.md / .json / plots from --out"),
    reference: str = typer.Option(None, help="row whose mean final dev accuracy is the target \\[the config's]"),
    include_in: Path = typer.Option(None, help="also write the tables between this Markdown file's bench-summary markers"),
) -> None:
    """Methods side by side, each lr chosen on validation data, every seed at it (resumable); writes summary.md and plots."""
    from pydantic import ValidationError

    from zorba.errors import UserError
    from zorba.experiments.bench import BenchConfig, load_bench_config, run_bench
    from zorba.experiments.bench_report import include, summarize

    if not summarize_only:
        bench_cfg = load_bench_config(config)
        if not memory:
            try:
                bench_cfg = BenchConfig.model_validate({**bench_cfg.model_dump(), "measure_memory": False, "equal_memory": False})
            except ValidationError as exc:
                raise UserError(f"--no-memory: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None
        run_bench(bench_cfg, out, say=lambda line: typer.echo(line, err=True))
    try:
        summary = summarize(out, reference)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if include_in is not None:
        include(summary, out, include_in)
    typer.echo(f"wrote {out}/summary.md, summary.json and plots" + (f"; the tables in {include_in}" if include_in else ""))
