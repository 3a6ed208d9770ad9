"""Run one method for cfg.rounds rounds on the shared setup and record, per round: training loss,
clients, bytes per client (uplink, downlink), client compute seconds, forward / backward passes and
wall time; and at round 0 (zero-shot), every eval_every rounds and the last round: dev and validation
accuracy and loss. The result has the shape of `zorba run`'s result.json where both say the same thing
(`accuracy`, `history` with 0-based rounds, `comm`, `seconds`), so zorba.experiments.study reads either."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection

import numpy as np

from zorba.federation.runner import participants
from zorba.methods.base import Method


def _scores(method: Method) -> tuple[dict, list[int]]:
    """Evaluation fields of a history record, and the dev predictions."""
    ev = method.evaluate()
    out = {"dev_accuracy": ev["dev"].accuracy, "dev_loss": ev["dev"].loss}
    if "validation" in ev:
        out.update(validation_accuracy=ev["validation"].accuracy, validation_loss=ev["validation"].loss)
    return out, ev["dev"].predictions


def run_method(
    method: Method, on_round: Callable[[dict], None] | None = None, clients: Collection[int] | None = None
) -> dict:
    """`clients`: the only clients that may take part (None: all); the others are never drawn."""
    cfg = method.cfg
    admitted = set(range(cfg.clients)) if clients is None else set(clients)
    method.exclude(frozenset(set(range(cfg.clients)) - admitted))
    started = time.perf_counter()
    initial, initial_predictions = _scores(method)
    predictions = initial_predictions
    history: list[dict] = []
    totals = {"up": 0, "down": 0, "forward": 0, "backward": 0, "client_seconds": 0.0}
    extras: dict = {}
    for t in range(cfg.rounds):
        tick = time.perf_counter()
        drawn = [c for c in participants(cfg, t) if c in admitted]
        stats = method.run_round(t, drawn) if drawn else method.idle_round(t)
        totals["up"] += sum(stats.up_bytes)
        totals["down"] += sum(stats.down_bytes)
        totals["forward"] += stats.forward
        totals["backward"] += stats.backward
        totals["client_seconds"] += stats.client_seconds
        rec = {
            "round": t,
            "train_loss": stats.loss,
            "clients": len(stats.up_bytes),
            "uplink_bytes_per_client": float(np.mean(stats.up_bytes)) if stats.up_bytes else 0.0,
            "downlink_bytes_per_client": float(np.mean(stats.down_bytes)) if stats.down_bytes else 0.0,
            "bytes_total": totals["up"] + totals["down"],  # cumulative, all clients, up + down
            "client_seconds": stats.client_seconds,
        }
        for key, value in (stats.extra or {}).items():
            if key == "blocks":  # per round, as the runner records it (memprobe.largest_block_sets reads it)
                rec["blocks"] = value
            else:
                extras[key] = value
        if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
            scores, predictions = _scores(method)
            rec.update(scores)
        rec["seconds"] = time.perf_counter() - tick
        history.append(rec)
        if on_round:
            on_round(rec)
    trained = [h for h in history if h["clients"]]
    per_client = lambda key: float(np.mean([h[key] for h in trained])) if trained else 0.0  # noqa: E731
    return {
        "accuracy": {"initial": initial["dev_accuracy"], "final": history[-1]["dev_accuracy"]},
        "initial_evaluation": initial,
        "comm": {
            "uplink_bytes_per_client_round": per_client("uplink_bytes_per_client"),
            "downlink_bytes_per_client_round": per_client("downlink_bytes_per_client"),
            "uplink_bytes_total": totals["up"],
            "downlink_bytes_total": totals["down"],
        },
        "passes": {"forward": totals["forward"], "backward": totals["backward"]},
        "client_seconds": totals["client_seconds"],
        "seconds": time.perf_counter() - started,
        "history": history,
        "extra": extras,
        "dev_predictions": predictions,
        "initial_dev_predictions": initial_predictions,
    }
