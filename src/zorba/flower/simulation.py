"""Run the Flower app in Flower's simulation engine (Ray backend), from Python: `zorba flower-sim`
and the tests. Flower's and Ray's state go to a private temp folder, removed afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from zorba.federation.config import RunConfig
from zorba.federation.outdir import check_out_dir
from zorba.flower.settings import FlowerOptions


@contextlib.contextmanager
def private_flower_dirs() -> Iterator[Path]:
    """FLWR_HOME and RAY_TMPDIR in a fresh short temp folder (Ray's socket paths must stay short)."""
    root = Path(tempfile.mkdtemp(prefix="zfl", dir="/tmp" if os.path.isdir("/tmp") else None))
    saved = {k: os.environ.get(k) for k in ("FLWR_HOME", "RAY_TMPDIR", "RAY_DEDUP_LOGS")}
    os.environ.update(FLWR_HOME=str(root / "flwr"), RAY_TMPDIR=str(root / "ray"), RAY_DEDUP_LOGS="0")
    try:
        yield root
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(root, ignore_errors=True)


def run_flower_simulation(
    cfg: RunConfig, opts: FlowerOptions, out: Path | None = None, overwrite: bool = False, actors: int | None = None
) -> dict:
    """One simulated federation: cfg.clients virtual SuperNodes, `actors` Ray workers (default: one
    per CPU core, at most one per client). Returns the result dict; writes outputs to `out` if given."""
    from flwr.simulation import run_simulation

    from zorba.flower.client_app import app as client_app
    from zorba.flower.server_app import make_server_app

    if out is not None:
        check_out_dir(out, overwrite)
        opts = replace(opts, out=str(out), overwrite=overwrite)
    actors = actors or max(1, min(cfg.clients, os.cpu_count() or 1))
    results: list[dict] = []
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
               "init_args": {"num_cpus": actors, "num_gpus": 0, "log_to_driver": False}}
    with private_flower_dirs():
        run_simulation(server_app=make_server_app(cfg, opts, results.append), client_app=client_app,
                       num_supernodes=cfg.clients, backend_config=backend)
    if not results:
        raise RuntimeError("the Flower simulation ended without a result (see the log above)")
    return results[0]
