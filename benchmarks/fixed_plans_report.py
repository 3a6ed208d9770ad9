"""Table of the fixed-plan runs that test benchmarks/block_signal.py's predictions against training.

Every client trains the same fixed block set every round (the runs apply docs/block_signal/fixed-plan.patch
to `--planner all`); the reference is the convergence study's `all` run on the same seed and settings.

    python benchmarks/fixed_plans_report.py docs/block_signal/runs docs/convergence/all/seed0
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def row(name: str, result: dict) -> str:
    cfg, evals = result["config"], [h for h in result["history"] if "dev_accuracy" in h]
    total = sum(b["numel"] for b in result["blocks"])
    active = result.get("fixed_plan_numel", total)
    step = cfg["lr"] * (total / active) ** cfg["lr_exponent"]
    val = " / ".join(f"{100 * h['validation_accuracy']:.1f}" for h in evals)
    dev = " / ".join(f"{100 * h['dev_accuracy']:.1f}" for h in evals)
    return f"| {name} | {cfg['lr']:g} | {step:.2g} | {val} | {evals[0]['validation_loss']:.4f} -> {evals[-1]['validation_loss']:.4f} | {dev} |"


def main(runs: Path, reference: Path) -> None:
    print("| run | lr | client step | validation accuracy % at rounds 5 / 10 / ... / 30 | validation loss | dev accuracy % |")
    print("|---|---|---|---|---|---|")
    print(row(f"all blocks ({reference})", json.loads((reference / "result.json").read_text())))
    for path in sorted(runs.glob("*/result.json")):
        result = json.loads(path.read_text())
        meta = json.loads((path.parent / "plan.json").read_text())
        result["fixed_plan_numel"] = meta["numel"]
        print(row(f"{meta['blocks']} ({path.parent.name})", result))
    for log in sorted(runs.glob("*.log")):
        if not (runs / log.stem / "result.json").is_file():  # a run stopped early: its last rounds
            lines = log.read_text().strip().split("\n")
            print(f"\n{log.stem} (stopped): " + "; ".join([ln for ln in lines if "dev acc" in ln] + lines[-1:]))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
