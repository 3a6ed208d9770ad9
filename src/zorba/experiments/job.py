"""`zorba run` as a function: validate everything, train, measure, then publish all outputs at once."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from zorba.core.models import state_digest
from zorba.experiments.significance import mcnemar
from zorba.federation.config import RunConfig, resolve_device
from zorba.federation.memprobe import memory_section
from zorba.federation.outdir import build_dir_beside, check_out_dir, replace_dir
from zorba.federation.reliability import Reliability
from zorba.federation.results import versions, write_outputs
from zorba.federation.resume import DurableRun, publish_beside_state
from zorba.federation.runner import Runner, RunState, check_inputs, load_run_model
from zorba.memory.profiles import over_budget


def run_job(
    cfg: RunConfig, out: Path, overwrite: bool = False, progress: bool = True,
    reliability: Reliability | None = None, resume: bool = False,
) -> dict:
    """Rounds are logged durably in out/state/ as they finish (zorba.federation.resume); `resume` continues them.
    A run that replaces an old one (--overwrite) is built beside it and renamed into place at the end,
    so a failed run leaves the old one as it was."""
    reliability = reliability or Reliability()
    resolve_device(cfg.device)  # a missing GPU fails before the output folder is touched
    if not resume:
        check_out_dir(out, overwrite)
    inputs = check_inputs(cfg)
    lm = load_run_model(cfg)
    base_digest = state_digest(lm.model)
    runner = Runner(cfg, inputs, lm, reliability)
    replacing = not resume and out.exists() and any(out.iterdir())
    build = build_dir_beside(out) if replacing else out
    try:
        result = _train_and_publish(runner, build, base_digest, reliability, resume, progress)
    except Exception:
        if replacing:
            shutil.rmtree(build, ignore_errors=True)
        raise
    if replacing:
        replace_dir(build, out)
    return result


def _train_and_publish(runner: Runner, out: Path, base_digest: str, reliability: Reliability, resume: bool,
                       progress: bool) -> dict:
    cfg = runner.cfg
    durable = DurableRun(runner, out, base_digest, reliability, resume)
    state = _run_with_progress(durable, cfg, _budget_warning(runner)) if progress else durable.run()
    result = build_result(cfg, state, base_digest)
    result["reliability"] = reliability.model_dump(mode="json")
    publish_beside_state(out, lambda tmp: write_outputs(tmp, result, state.server.replica, state.server.log))
    return result


def _budget_warning(runner: Runner) -> Callable[[dict], str]:
    """A warning for the first round whose plans the memory model puts above a client's budget
    (planner `all` can; budget-feasible planners cannot), then silence: result.json lists them all."""
    warned = []

    def check(rec: dict) -> str:
        planned = {int(c): blocks for c, blocks in rec.get("blocks", {}).items()}
        over = over_budget(runner.profiles, runner.memory_model, planned)
        if not over or warned:
            return ""
        warned.append(rec["round"])
        return (f"warning: round {rec['round']}'s plans exceed the memory budget of clients {over} by the memory "
                f"model's prediction (planner {runner.cfg.planner!r} does not plan against budgets)")

    return check


def round_line(rec: dict, rounds: int) -> str:
    """One plain line per round for logs (output redirected to a file): a bar draws only on a terminal."""
    line = (f"round {rec['round'] + 1}/{rounds}  clients {rec['answered']}/{rec['clients']}  "
            f"train loss {rec['train_loss']:.4f}")
    if "dev_accuracy" in rec:
        line += f"  dev acc {100 * rec['dev_accuracy']:.2f}%"
    return line + f"  {rec['seconds']:.1f} s"


def _run_with_lines(runner: Runner | DurableRun, cfg: RunConfig, warn: Callable[[dict], str] | None) -> RunState:
    def on_round(rec: dict) -> None:
        print(round_line(rec, cfg.rounds), flush=True)
        message = warn(rec) if warn else ""
        if message:
            print(message, flush=True)

    return runner.run(on_round)


def _run_with_progress(runner: Runner | DurableRun, cfg: RunConfig, warn: Callable[[dict], str] | None = None) -> RunState:
    if not sys.stdout.isatty():
        return _run_with_lines(runner, cfg, warn)
    columns = (TextColumn("[bold]round"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task("rounds", total=cfg.rounds, status="")

        def on_round(rec: dict) -> None:
            status = f"loss {rec['train_loss']:.4f}"
            if "dev_accuracy" in rec:
                status += f"  dev acc {100 * rec['dev_accuracy']:.2f}%"
            bar.update(task, advance=1, status=status)
            message = warn(rec) if warn else ""
            if message:
                bar.console.print(f"[yellow]{message}[/yellow]")

        return runner.run(on_round)


def build_result(cfg: RunConfig, state: RunState, base_digest: str) -> dict:
    n_params = sum(b.numel for b in state.lm.blocks)
    up, down = state.bytes_up, state.bytes_down
    return {
        "method": cfg.method,
        "task": cfg.task,
        "model": cfg.model,
        "config": cfg.model_dump(mode="json"),
        "device": state.torch_device,  # cfg.device resolved ("auto" -> cuda or cpu)
        "versions": versions(),
        "seeds": {"run": cfg.seed, "partition": cfg.seed, "note": "every stream derives from the run seed"},
        "base_model_sha256": base_digest,
        "final_model_sha256": state.server.replica.digest(),
        "clients_in_sync": state.device.digest() == state.server.replica.digest(),
        "blocks": [{"name": b.name, "numel": b.numel} for b in state.lm.blocks],
        "client_block_counts": state.block_counts,
        "accuracy": state.accuracy,
        "dev_significance": mcnemar(state.initial_dev_predictions, state.dev_predictions, state.dev_labels),
        "test_file_accuracy": state.test_accuracy or None,
        "comm": {
            "uplink_bytes_per_client_round": sum(up) / max(len(up), 1),
            "downlink_bytes_per_client_round": sum(down) / max(len(down), 1),
            "uplink_bytes_total": sum(up) * cfg.clients,
            "fedavg_bytes_per_client_round": 4 * n_params,
        },
        "memory": memory_section(
            cfg, state.lm.blocks, state.history, state.profiles, state.memory_model, cfg.measure_memory,
            "peak RSS (VmHWM) of a fresh process running one local round on the client's largest block set",
        ),
        "seconds": state.seconds,
        "history": state.history,
    }
