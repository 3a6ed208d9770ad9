"""Planner benchmark (docs/theory.md, "Solvers"): the heuristic's wall time at 1000 clients x 48 blocks
(target < 1 s) and its gap there to a run ten times longer; its gap to the exact MILP on mid-size
instances; the MILP's time against brute force on small ones.

Usage: python benchmarks/bench_planner.py [--quick] [--seeds 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from zorba.planner import brute_force, solve_exact, solve_heuristic
from zorba.planner.instances import transformer_instance

MID_SIZES = [(2, 8), (3, 6), (4, 5), (4, 6), (6, 4), (3, 8)]
SMALL_SIZES = [(2, 6), (3, 4), (4, 3)]


def timed(fn, *args, **kwargs):
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - started


def large(seeds: int, reference_seconds: float) -> list[dict]:
    rows = []
    for seed in range(seeds):
        for local_steps in (1, 5):
            instance = transformer_instance(1000, 48, seed=seed, local_steps=local_steps)
            plan, seconds = timed(solve_heuristic, *instance, time_limit=0.8)
            longer = solve_heuristic(*instance, time_limit=reference_seconds)
            gap = plan.best_bound / min(plan.best_bound, longer.best_bound) - 1
            rows.append(
                {
                    "N": 1000,
                    "L": 48,
                    "K": local_steps,
                    "seed": seed,
                    "seconds": seconds,
                    "gap_to_longer_run": gap,
                }
            )
            print(
                f"1000x48 K={local_steps} seed={seed}: {seconds:.3f} s, gap to a {reference_seconds:.0f} s run {gap:.2e}"
            )
    return rows


def mid(seeds: int) -> list[dict]:
    rows = []
    for N, L in MID_SIZES:
        for seed in range(seeds):
            instance = transformer_instance(N, L, seed=seed)
            exact, exact_seconds = timed(solve_exact, *instance, time_limit=300)
            heur, heur_seconds = timed(solve_heuristic, *instance, time_limit=0.8)
            gap = heur.best_bound / exact.best_bound - 1
            rows.append(
                {
                    "N": N,
                    "L": L,
                    "seed": seed,
                    "exact": exact.solver,
                    "exact_seconds": exact_seconds,
                    "heuristic_seconds": heur_seconds,
                    "gap": gap,
                }
            )
            print(
                f"{N}x{L} seed={seed}: {exact.solver} {exact_seconds:.2f} s, heuristic {heur_seconds:.2f} s, gap {gap:.2e}"
            )
    return rows


def small(seeds: int) -> list[dict]:
    rows = []
    for N, L in SMALL_SIZES:
        for seed in range(seeds):
            instance = transformer_instance(N, L, seed=seed)
            oracle, brute_seconds = timed(brute_force, *instance)
            exact, exact_seconds = timed(solve_exact, *instance)
            same = (
                abs(exact.best_bound / oracle.best_bound - 1) < 1e-9
                and abs(exact.total_memory / oracle.total_memory - 1) < 1e-12
            )
            rows.append(
                {
                    "N": N,
                    "L": L,
                    "seed": seed,
                    "brute_seconds": brute_seconds,
                    "milp_seconds": exact_seconds,
                    "agree": same,
                }
            )
            print(
                f"{N}x{L} seed={seed}: brute force {brute_seconds:.3f} s, MILP {exact_seconds:.3f} s, agree {same}"
            )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument(
        "--quick", action="store_true", help="one seed, shorter reference run, no mid sizes above 24 cells"
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    seeds = 1 if args.quick else args.seeds
    if args.quick:
        MID_SIZES[:] = [s for s in MID_SIZES if s[0] * s[1] <= 24]
    results = {"large": large(seeds, 4.0 if args.quick else 10.0), "mid": mid(seeds), "small": small(seeds)}
    seconds = [r["seconds"] for r in results["large"]]
    gaps = [r["gap"] for r in results["mid"]]
    print(
        f"summary: 1000x48 heuristic max {max(seconds):.3f} s; mid-size gap mean {np.mean(gaps):.2e} max {max(gaps):.2e}; "
        f"MILP agrees with brute force {all(r['agree'] for r in results['small'])}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
