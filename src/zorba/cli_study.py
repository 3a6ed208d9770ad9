"""`zorba study` command: the typer function (registered in zorba.cli)."""

from __future__ import annotations

from pathlib import Path

import typer


def study(
    config: Path = typer.Option(Path("configs/convergence.toml"), help="study TOML: planners x lr grid x seeds"),
    out: Path = typer.Option(Path("runs/convergence"), help="output folder; finished cells there are skipped"),
    summarize_only: bool = typer.Option(False, "--summarize-only", help="only rewrite summary.md / .json / .png"),
) -> None:
    """Time-to-accuracy study of the block planners (resumable); writes summary.md and convergence.png."""
    from zorba.errors import UserError
    from zorba.study import load_study_config, run_study
    from zorba.study_report import summarize

    if not summarize_only:
        run_study(load_study_config(config), out, say=lambda line: typer.echo(line, err=True))
    try:
        summarize(out)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    typer.echo(f"wrote {out}/summary.md, summary.json and convergence.png")
