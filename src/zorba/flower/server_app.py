"""The Flower ServerApp: an `@app.main()` loop over the Message API (see coordinator.py).

`app` reads its configuration from the run config (`[tool.flwr.app.config]` in pyproject.toml,
overridable with `flwr run --run-config`); `make_server_app` binds a configuration directly, for the
programmatic simulation (`zorba flower-sim`), whose run config is empty."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from zorba.federation.config import RunConfig
from zorba.federation.outdir import check_out_dir
from zorba.flower.coordinator import build_run, train
from zorba.flower.outputs import build_result, write_run
from zorba.flower.settings import FlowerOptions, split_run_config

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg, opts = split_run_config(context.run_config)
    serve(grid, cfg, opts, engine="flower-deployment")


def serve(grid: Grid, cfg: RunConfig, opts: FlowerOptions, engine: str) -> dict:
    if opts.out:  # before any training: a run must not end unable to publish, or replace what it must not
        check_out_dir(Path(opts.out), opts.overwrite)
    run = train(grid, build_run(cfg, opts))
    result = build_result(run, engine)
    if opts.out:
        write_run(run, result, Path(opts.out))
    return result


def make_server_app(cfg: RunConfig, opts: FlowerOptions, on_result: Callable[[dict], None]) -> ServerApp:
    bound = ServerApp()

    @bound.main()
    def bound_main(grid: Grid, context: Context) -> None:
        on_result(serve(grid, cfg, opts, engine="flower-simulation"))

    return bound
