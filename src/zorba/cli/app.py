"""The `zorba` command line. Every bad input ends as one line on stderr and exit code 2."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import typer

from zorba.cli.options import config_values, training_options, with_default
from zorba.errors import UserError
from zorba.federation.reliability import Reliability

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Federated zeroth-order fine-tuning with heterogeneous block activation.")


@app.command()
@training_options()
def run(
    test_file: Path = typer.Option(None, help="extra TSV (same format) to report accuracy on \\[none]"),
    out: Path = typer.Option(None, help="output folder \\[runs/latest]"),
    device: str = typer.Option(None, help=with_default("device", "where clients train: cpu | cuda | cuda:N | auto")),
    resume: Path = typer.Option(None, help="continue the killed run whose --out was this folder"),
    dropout: float = typer.Option(None, help=with_default("dropout", "chance each client is offline in a round (seeded)",
                                                          Reliability)),
    deadline: float = typer.Option(None, help="seconds per round; later reports are left out \\[none]"),
    clip: float = typer.Option(None, help=with_default("clip", "clip scalars at this multiple of the running median "
                                                       "|g|; 0 = off", Reliability)),
    aggregate: str = typer.Option(None, help=with_default("aggregate", "per-block aggregation: screened | mean | "
                                                          "trimmed | median", Reliability)),
    trim: float = typer.Option(None, help=with_default("trim", "fraction of a block's clients --aggregate trimmed "
                                                       "drops", Reliability)),
    outlier: float = typer.Option(None, help=with_default("outlier", "--aggregate screened drops a client above this "
                                                          "multiple of the block's low median |g|", Reliability)),
    **options,
) -> None:
    """Run federated ZO fine-tuning in-process and write result.json, report.md, plot, log, weights."""
    from zorba.experiments.job import run_job
    from zorba.federation.config import make_config

    values = dict(config_values(options), test_file=str(test_file) if test_file else None, device=device)
    reliability = dict(dropout=dropout, deadline=deadline, clip=clip, aggregate=aggregate, trim=trim, outlier=outlier)
    if resume is not None:
        from zorba.federation.resume import resume_options

        _check_resume_target(resume, out, options["overwrite"])
        given = {k: v for k, v in values.items() if k != "measure_memory"}
        cfg, rel = resume_options(resume, {**given, **reliability})
        result = run_job(cfg, resume, reliability=rel, resume=True)
        out = resume
    else:
        from zorba.federation.reliability import make_reliability

        out = out or Path("runs/latest")
        rel = make_reliability(**reliability)
        result = run_job(make_config(**values), out, overwrite=options["overwrite"], reliability=rel)
    acc = result["accuracy"]
    typer.echo(f"dev accuracy {100 * acc['initial']:.2f}% -> {100 * acc['final']:.2f}%; wrote {out}/result.json")


def _check_resume_target(resume: Path, out: Path | None, overwrite: bool) -> None:
    """A resumed run writes where it started; --out elsewhere or --overwrite would be silently ignored."""
    if out is not None and os.path.abspath(out) != os.path.abspath(resume):
        raise UserError(f"--out {out} differs from the run being resumed ({resume}): a resumed run writes in its own folder")
    if overwrite:
        raise UserError("--overwrite cannot be combined with --resume (resuming continues the run in place)")


@app.command()
def verify(run_dir: Path = typer.Argument(..., help="a run's output folder")) -> None:
    """Check the run's records and rebuild its weights from base + log: exit 0 bit-identical,
    1 differs, 2 cannot check (missing or malformed files)."""
    from zorba.federation.verify import verify as verify_run

    ok, message = verify_run(run_dir)
    typer.echo(message)
    raise typer.Exit(0 if ok else 1)


from zorba.cli.bench import bench  # noqa: E402

app.command("bench")(bench)

from zorba.cli.profile import profile_memory  # noqa: E402

app.command("profile-memory")(profile_memory)

from zorba.cli.flower_sim import flower_sim  # noqa: E402

app.command("flower-sim")(flower_sim)

from zorba.cli.plan import plan  # noqa: E402

app.command("plan")(plan)

from zorba.cli.study import study  # noqa: E402

app.command("study")(study)


def main() -> None:
    """Entry point: usage errors and UserErrors become one line and exit code 2."""
    try:
        code = app(standalone_mode=False)
    except UserError as exc:
        print(f"zorba: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        print("zorba: aborted", file=sys.stderr)
        sys.exit(130)
    except click.ClickException as exc:
        print(f"zorba: error: {exc.format_message()}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
