"""Target A4 (docs/performance.md): server replay of one (seed, scalar) on a block / a plain torch RNG
fill of the same number of elements (normal_, and uniform_ for reference); target <= 1.3.

Also reports the same replay on a client's TieredReplica (exact fp32 state in a temp file on CPU):
that path adds the store's read/write and the re-derivation of the bf16 working copy. A round of
40 pairs on a block is timed too (per pair): the compiled loop and the fused GPU kernel apply a
tensor's whole sequence in one pass over memory. The server's
replay is also timed through rng.py's torch path (`ratio_normal_torch_path`), on CPUs where the
compiled loop (rng_native.py) would serve it.

Usage: python benchmarks/bench_replay.py [--model minilm] [--reps 7] [--threads N] [--device cpu]
"""

from __future__ import annotations

import argparse
import copy
import json

import _common as C
import torch

from zorba.core import rng_native
from zorba.core.replica import Replica
from zorba.memory.precision import make_client_replica
from zorba.wire.protocol import ClientUpdate, LogEntry, StepReport

ROUND_PAIRS = 40  # the default run's round: 8 clients x 5 local steps


def one_scalar_entry(block: int, pairs: int = 1) -> LogEntry:
    steps = tuple(StepReport(12345 + i, (0.5,)) for i in range(pairs))
    return LogEntry(0, 1e-6, 1, "rademacher", (ClientUpdate(0, (block,), steps),))


def _torch_path(fn, *args):
    """rng.py's torch path instead of the compiled CPU loop, timed in the same run."""
    with rng_native.off():
        fn(*args)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = C.load(args.model, args.device)
    server = Replica(lm)
    client = make_client_replica(copy.deepcopy(lm), "bf16") if args.device == "cpu" else None
    worst, rounds = 0.0, []
    for b in sorted({0, 1, server.num_blocks - 1}):
        numel = lm.blocks[b].numel
        fill = torch.empty(numel, device=args.device)
        entry, round_entry = one_scalar_entry(b), one_scalar_entry(b, ROUND_PAIRS)
        fns = {
            "replay": lambda e=entry: server.apply(e),
            "normal_": lambda f=fill: f.normal_(),
            "uniform_": lambda f=fill: f.uniform_(),
            "replay_torch_path": lambda e=entry: _torch_path(server.apply, e),
            "replay_round": lambda e=round_entry: server.apply(e),
            "replay_round_torch_path": lambda e=round_entry: _torch_path(server.apply, e),
        }
        if client is not None:
            fns["client_replay"] = lambda e=entry: client.apply(e)
        t = C.best_of(fns, args.reps, args.device)
        row = {"block": lm.blocks[b].name, "numel": numel, **{k + "_s": v for k, v in t.items()},
               "ratio_normal": t["replay"] / t["normal_"], "ratio_uniform": t["replay"] / t["uniform_"],
               "ratio_normal_torch_path": t["replay_torch_path"] / t["normal_"],
               "round_per_pair_ratio_normal": t["replay_round"] / ROUND_PAIRS / t["normal_"],
               "round_per_pair_ratio_normal_torch_path": t["replay_round_torch_path"] / ROUND_PAIRS / t["normal_"]}
        if client is not None:
            row["client_ratio_normal"] = t["client_replay"] / t["normal_"]
        print(json.dumps(row))
        worst = max(worst, row["ratio_normal"])
        rounds.append(f"{row['block']} {row['round_per_pair_ratio_normal']:.3f} "
                      f"(torch path {row['round_per_pair_ratio_normal_torch_path']:.3f})")
    print(f"A4 a round of {ROUND_PAIRS} pairs, per pair / normal_, compiled loop: {', '.join(rounds)}")
    print(f"A4 worst replay / normal_ ratio (target <= 1.3): {worst:.3f}")


if __name__ == "__main__":
    main()
