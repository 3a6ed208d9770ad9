"""A ZO step's cost with its forwards sharing the frozen prefix (zorba.memory.prefix), against full forwards,
side by side in one run: one local step (q = 1: two forwards and three perturbation passes) on a client
that trains a single transformer layer, for each layer.

Expected: with layer l of L active (l = 0 the first), the prefix of l layers is computed once instead
of twice, so a step costs about (2 L - l) / (2 L) of the full one (the embeddings, the head and the
perturbation passes are not shared). Both paths give the same losses bit for bit; the script checks it.

Usage: python benchmarks/bench_prefix.py [--models minilm,opt125m] [--reps 5] [--threads N]
Prints one JSON line per model and, last, the step time ratio for the last layer (the largest saving).
"""

from __future__ import annotations

import json

import _common as C

from zorba.core.zo import spsa_step
from zorba.memory.precision import make_client_replica
from zorba.memory.prefix import SharedPrefix


def layer_blocks(lm) -> list[int]:
    return [i for i, b in enumerate(lm.blocks) if b.name.startswith("layer.")]


def step(replica, scorer, ids, labels, b: int, prefix: SharedPrefix, shared: bool, lr: float):
    """One ZO step on block b, its forwards sharing the frozen prefix or not."""
    fn = lambda: scorer.loss(ids, labels)  # noqa: E731
    return spsa_step(prefix.shared(fn) if shared else fn, replica.tensors, [b], 3, 1e-3, lr)[0]


def first_step(replica, scorer, ids, labels, b: int, shared: bool):
    """One step's report from the round-start weights (the store re-derives them exactly)."""
    snap = replica.snapshot([b])
    with SharedPrefix(replica.lm.model, replica.tensors[b]) as prefix:
        report = step(replica, scorer, ids, labels, b, prefix, shared, 1e-3)
    replica.restore(snap)
    return report


def prefix_row(name: str, reps: int) -> dict:
    lm = C.load(name)
    scorer, ids, labels = C.batch(lm)
    replica = make_client_replica(lm, "bf16", "memory")  # lm itself, frozen blocks now bf16: same scorer
    layers = layer_blocks(lm)
    rows = []
    for pos, b in enumerate(layers):
        same = first_step(replica, scorer, ids, labels, b, True) == first_step(replica, scorer, ids, labels, b, False)
        snap = replica.snapshot([b])
        with SharedPrefix(replica.lm.model, replica.tensors[b]) as prefix:

            def timed(shared: bool, b=b, prefix=prefix):
                return lambda: step(replica, scorer, ids, labels, b, prefix, shared, 0.0)

            t = C.best_of({"shared": timed(True), "full": timed(False)}, reps)
        replica.restore(snap)
        rows.append({"layer": pos, "block": b, "shared_s": t["shared"], "full_s": t["full"],
                     "ratio": t["shared"] / t["full"], "expected": (2 * len(layers) - pos) / (2 * len(layers)),
                     "same_scalars": same})
    return {"model": name, "layers": rows}


def main() -> None:
    args = C.timing_args()
    last = []
    for name in args.models.split(","):
        row = prefix_row(name, args.reps)
        print(json.dumps(row))
        if not all(r["same_scalars"] for r in row["layers"]):
            raise SystemExit(f"{name}: shared and full forwards gave different scalars")
        last.append(f"{name} {row['layers'][-1]['ratio']:.3f} (expected ~{row['layers'][-1]['expected']:.3f})")
    print(f"shared-prefix / full ZO step, last layer active: {', '.join(last)}")


if __name__ == "__main__":
    main()
