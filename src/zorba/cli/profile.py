"""`zorba profile-memory`: measure a client's peak memory for 0..L active blocks (a fresh process per
point), fit the affine memory model by least squares and write it as a calibration JSON.

Model (docs/memory.md): M(A) = base + sum_l A_l delta_l + activation, with delta_l = c * numel_l: one
byte-per-parameter cost c of making a block trainable (fp32 working copy instead of the frozen one).
Fitting two numbers (intercept and c) to L + 1 measurements keeps the check honest: the printed error
is a real prediction error, and a held-out block set (every other block) is predicted too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import typer

from zorba.cli.options import option
from zorba.errors import UserError


@dataclass
class Fit:
    intercept: float  # bytes with no block active: runtime + frozen weights + activations + scratch
    per_param: float  # bytes per active parameter
    activation: float  # part of the intercept that the forward pass adds (peak minus ready)

    def predict(self, active_params: float) -> float:
        return self.intercept + self.per_param * active_params


def fit_affine(active_params: list[float], peaks: list[float], activation: float = 0.0) -> Fit:
    """Least-squares line through (active parameters, measured peak bytes)."""
    if len(active_params) < 2:
        raise UserError("need at least two measurements to fit the memory model")
    x = np.asarray(active_params, float)
    design = np.stack([np.ones_like(x), x], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, np.asarray(peaks, float), rcond=None)
    return Fit(float(intercept), float(max(slope, 0.0)), activation)


def to_memory_model(fit: Fit, block_sizes: list[int]):
    """The planner's MemoryModel (zorba.memory.memory_model) from a fit."""
    from zorba.memory.memory_model import MemoryModel

    return MemoryModel(fit.intercept - fit.activation, fit.per_param * np.asarray(block_sizes, float), fit.activation)


def _peak(m: dict, device: str) -> float:
    return float(m["peak_cuda_bytes"] if device.startswith("cuda") else m["peak_rss_bytes"])


def _ready(m: dict, device: str) -> float:
    return float(m["ready_cuda_bytes"] if device.startswith("cuda") else m["ready_rss_bytes"])


def profile_memory(
    model: str = option("model", help="HF model id / folder, 'minilm', or random:<name> (memprobe)"),
    task: str = option("task"),
    batch_size: int = option("batch_size"),
    max_len: int = option("max_len"),
    local_steps: int = option("local_steps", help="local steps of each measured round: a round's peak grows over its "
                              "first steps (allocator), so measure the rounds the runs take"),
    precision: str = option("precision", help="frozen blocks' dtype on the client: int8 | bf16 | fp16 | fp32"),
    device: str = option("device", help="cpu or cuda"),
    data_dir: Path = option("data_dir", help="folder with <task>/dev.tsv"),
    out: Path = typer.Option(Path("memory-model.json"), help="calibration JSON to write"),
) -> None:
    """Measure peak client memory for 0..L active blocks, fit M(A), print predicted vs measured."""
    from zorba.federation.memprobe import MemoryProbe, load_probe_model, measure
    from zorba.memory.memory_model import format_bytes
    from zorba.memory.precision import frozen_dtype

    frozen_dtype(precision)
    if batch_size < 1 or max_len < 8 or local_steps < 1:
        raise UserError("--batch-size and --local-steps must be >= 1 and --max-len >= 8")
    if task not in ("sst2", "rte"):
        raise UserError(f"unknown task {task!r}; choose sst2 or rte")
    sizes = [b.numel for b in load_probe_model(model).blocks]
    L = len(sizes)

    def run(blocks: tuple[int, ...]) -> dict:
        probe = MemoryProbe(model, task, blocks, batch_size, max_len, local_steps, device,
                            str(data_dir) if data_dir else None, precision)
        try:
            return measure(probe)
        except RuntimeError as exc:
            raise UserError(str(exc)) from None

    points = [tuple(range(k)) for k in range(L + 1)]
    measured = [run(b) for b in points]
    x = [sum(sizes[b] for b in blocks) for blocks in points]
    peaks = [_peak(m, device) for m in measured]
    fit = fit_affine(x, peaks, activation=max(peaks[0] - _ready(measured[0], device), 0.0))
    held_out = tuple(range(0, L, 2))
    held = run(held_out)
    rows = [(f"{len(b)} active", xi, p) for b, xi, p in zip(points, x, peaks, strict=True)]
    rows.append((f"held out {list(held_out)}", sum(sizes[b] for b in held_out), _peak(held, device)))
    worst = 0.0
    typer.echo(f"{'blocks':>20} {'predicted':>12} {'measured':>12} {'error':>8}")
    for label, xi, p in rows:
        err = fit.predict(xi) / p - 1
        worst = max(worst, abs(err))
        typer.echo(f"{label:>20} {format_bytes(fit.predict(xi)):>12} {format_bytes(p):>12} {100 * err:>7.2f}%")
    mem = to_memory_model(fit, sizes)
    payload = {**mem.to_dict(), "model": model, "task": task, "batch_size": batch_size, "max_len": max_len,
               "local_steps": local_steps,
               "precision": precision, "device": device, "bytes_per_active_param": fit.per_param,
               "max_abs_error": worst, "measurements": [{"blocks": list(b), "peak_bytes": p}
                                                        for b, p in zip(points + [held_out], peaks + [_peak(held, device)],
                                                                        strict=True)]}
    out.write_text(json.dumps(payload, indent=2))
    typer.echo(f"max |error| {100 * worst:.2f}% (target <= 10%); wrote {out}")
