"""What the frozen blocks' precision costs in time: a client's ZO step on a quarter of the blocks with
the other blocks in fp32, bf16 or int8 (zorba.memory.precision, zorba.memory.quant), side by side in one run.

Memory is bench_memory.py's job (fresh processes); this script times the same step on three replicas
of the same weights, interleaved (best of --reps), and prints how far each low-precision forward's
class log-probabilities are from the fp32 one's on the batch. Last line: the int8 / bf16 step ratio.

Usage: python benchmarks/bench_precision.py [--models minilm,opt125m] [--reps 5] [--threads N]
"""

from __future__ import annotations

import copy
import json
import math

import _common as C

from zorba.core.scoring import Scorer
from zorba.core.zo import spsa_step
from zorba.memory.precision import make_client_replica

PRECISIONS = ("fp32", "bf16", "int8")


def quarter(n_blocks: int) -> list[int]:
    """As bench_memory.py: blocks 1..ceil(L/4), the transformer layers after the embeddings."""
    return list(range(1, 1 + max(1, math.ceil(n_blocks / 4))))


def precision_row(name: str, reps: int) -> dict:
    base = C.load(name)
    scorer, ids, labels = C.batch(base)
    replicas = {p: make_client_replica(copy.deepcopy(base), p, "memory") for p in PRECISIONS}
    active = quarter(replicas["fp32"].num_blocks)
    scorers = {p: Scorer(r.lm, scorer.task, scorer.max_len) for p, r in replicas.items()}
    for r in replicas.values():
        r.snapshot(active)

    def step(p: str):
        rep, sc = replicas[p], scorers[p]
        return lambda: spsa_step(lambda: sc.loss(ids, labels), rep.tensors, active, sseed=0, mu=1e-3, lr=0.0)

    def forward(p: str):
        return lambda: scorers[p].loss(ids, labels)

    times = C.best_of({f"step_{p}": step(p) for p in PRECISIONS} | {f"forward_{p}": forward(p) for p in PRECISIONS},
                      reps)
    ref = scorers["fp32"].logits(ids)
    dev = {p: float((scorers[p].logits(ids) - ref).abs().max()) for p in PRECISIONS[1:]}
    return {
        "model": name, "active_blocks": active, "seconds": times,
        "step_ratio_vs_fp32": {p: times[f"step_{p}"] / times["step_fp32"] for p in PRECISIONS[1:]},
        "step_ratio_int8_vs_bf16": times["step_int8"] / times["step_bf16"],
        "max_abs_logprob_deviation_vs_fp32": dev,
    }


def main() -> None:
    args = C.timing_args()
    worst = 0.0
    for name in args.models.split(","):
        row = precision_row(name, args.reps)
        print(json.dumps(row))
        worst = max(worst, row["step_ratio_int8_vs_bf16"])
    print(f"int8 / bf16 frozen blocks, ZO step time on a quarter of the blocks (worst model): {worst:.3f}")


if __name__ == "__main__":
    main()
