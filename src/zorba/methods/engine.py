"""Run one method for cfg.rounds rounds on the shared setup and record, per round: training loss,
bytes per client (uplink, downlink), forward / backward passes, cumulative bytes, wall time, and dev
accuracy every eval_every rounds (and at round 0 and the last round)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from zorba.methods.base import Method
from zorba.runner import participants


def run_method(method: Method, on_round: Callable[[dict], None] | None = None) -> dict:
    cfg = method.cfg
    started = time.perf_counter()
    history = [{"round": 0, "dev_accuracy": method.accuracy(), "bytes_total": 0}]
    totals = {"up": 0, "down": 0, "forward": 0, "backward": 0}
    extras: dict = {}
    for t in range(cfg.rounds):
        tick = time.perf_counter()
        stats = method.run_round(t, participants(cfg, t))
        totals["up"] += sum(stats.up_bytes)
        totals["down"] += sum(stats.down_bytes)
        totals["forward"] += stats.forward
        totals["backward"] += stats.backward
        rec = {
            "round": t + 1,
            "train_loss": stats.loss,
            "clients": len(stats.up_bytes),
            "uplink_bytes_per_client": float(np.mean(stats.up_bytes)),
            "downlink_bytes_per_client": float(np.mean(stats.down_bytes)),
            "bytes_total": totals["up"] + totals["down"],
            "seconds": time.perf_counter() - tick,
        }
        if (t + 1) % cfg.eval_every == 0 or t + 1 == cfg.rounds:
            rec["dev_accuracy"] = method.accuracy()
        for key, value in (stats.extra or {}).items():
            if key == "blocks":
                extras.setdefault("blocks", []).append(value)
            else:
                extras[key] = value
        history.append(rec)
        if on_round:
            on_round(rec)
    rounds = [h for h in history if h["round"] > 0]
    return {
        "initial_accuracy": history[0]["dev_accuracy"],
        "final_accuracy": history[-1]["dev_accuracy"],
        "uplink_bytes_per_client_round": float(np.mean([h["uplink_bytes_per_client"] for h in rounds])),
        "downlink_bytes_per_client_round": float(np.mean([h["downlink_bytes_per_client"] for h in rounds])),
        "uplink_bytes_total": totals["up"],
        "downlink_bytes_total": totals["down"],
        "forward_passes": totals["forward"],
        "backward_passes": totals["backward"],
        "seconds": time.perf_counter() - started,
        "history": history,
        "extra": extras,
    }
