"""`zorba study` command: the typer function (registered in zorba.cli.app)."""

from __future__ import annotations

from pathlib import Path

import typer


def study(
    config: Path = typer.Option(Path("configs/convergence.toml"), help="study TOML: planners x lr grid x seeds"),
    out: Path = typer.Option(Path("runs/convergence"), help="output folder; finished cells there are skipped"),
    summarize_only: bool = typer.Option(False, "--summarize-only", help="only rewrite summary.md / .json / .png"),
    include_in: Path = typer.Option(None, help="also write the table between this Markdown file's "
                                    "convergence-summary markers"),
) -> None:
    """Time-to-accuracy study of the block planners (resumable); writes summary.md and convergence.png."""
    from zorba.errors import UserError
    from zorba.experiments.study import load_study_config, run_study
    from zorba.experiments.study_report import include, summarize

    if not summarize_only:
        run_study(load_study_config(config), out, say=lambda line: typer.echo(line, err=True))
    try:
        summary = summarize(out)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if include_in is not None:
        include(summary, out, include_in)
    written = "summary.md, summary.json" + (" and convergence.png" if summary["planners"] else "")
    typer.echo(f"wrote {written} in {out}" + (f"; the table in {include_in}" if include_in else ""))
