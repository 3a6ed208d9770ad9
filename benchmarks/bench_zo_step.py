"""Targets A1 and A2 (docs/performance.md), measured side by side in one run on this machine.

A1: ZO step time / (2 x forward time) on the same batch, all blocks active; target <= 1.10. Two step
    times: one isolated step (every table perturbed eagerly), and a step inside a client round of
    K = 5 local steps as client.run_round runs it (large embedding tables deferred, deferred.py;
    small tensors in one buffer, packed.py).
A2: perturbation cost on a fraction f of the parameters / (f x the all-blocks cost); target <= 1.2.
    Three costs per subset: one pass (`add_scaled_noise_`: keys derived and small z generated for that
    one pass); a step's perturbation work (`spsa_step` with a constant loss: keys and small z once,
    three passes back to back); and the same three passes timed inside real steps, with the two
    forwards between them (`ratio_in_step`): the forwards evict the generator's buffers and code, so
    each pass after one starts cold, as it does in training (docs/performance.md, A2).
    The round (A1) and the in-step passes (A2) are also timed through rng.py's torch path
    (`*_torch_path`), the reference the compiled CPU loop (rng_native.py, _rng_native.c) is compared with.

Usage: python benchmarks/bench_zo_step.py [--models tiny,minilm,opt125m] [--reps 5] [--threads N]
       [--client-malloc]   (glibc's mmap threshold fixed at 1 MiB first, as a client's TieredReplica does)
Prints one line per measurement and, last, the worst A1 ratio of the new path.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import contextmanager, nullcontext

import _common as C
import _legacy_rng as legacy
import torch

from zorba.core import rng_native, zo
from zorba.core.deferred import DeferredTables
from zorba.core.packed import PackedSmallTensors
from zorba.core.replica import Replica
from zorba.core.zo import add_scaled_noise_, spsa_step
from zorba.memory.precision import return_freed_memory_promptly

ROUND_STEPS = 5  # the default local steps per round


def step_ratios(name: str, reps: int, device: str) -> dict:
    lm = C.load(name, device)
    scorer, ids, labels = C.batch(lm)
    tensors = Replica(lm).tensors
    blocks = list(range(len(tensors)))

    def loss() -> float:
        return scorer.loss(ids, labels)

    active = [t for block in tensors for t in block]

    def client_round(defer: bool):
        def run():
            with DeferredTables(lm.model, active if defer else []) as d, PackedSmallTensors(active if defer else []) as p:
                for k in range(ROUND_STEPS):
                    spsa_step(loss, tensors, blocks, k, 1e-3, 0.0, deferred=d, packed=p)
                d.discard()  # as run_round: the round's local weights are dropped

        return run

    started = time.perf_counter()
    loss()
    if time.perf_counter() - started < 0.01:  # a millisecond forward: its best needs more rounds
        reps *= 4
    times = C.best_of({
        "forward": loss,
        "step": lambda: spsa_step(loss, tensors, blocks, 1, 1e-3, 0.0),
        "round_eager": client_round(False),
        "round_deferred": client_round(True),
        "step_cache_z": lambda: spsa_step(loss, tensors, blocks, 1, 1e-3, 0.0, cache_z=True),
        "step_legacy": lambda: legacy.spsa_step(loss, tensors, blocks, 1, 1e-3, 0.0),
        "round_deferred_torch_path": torch_path(client_round(True)),
    }, reps, device)
    two = 2 * times["forward"]
    return {
        "model": name, "params": sum(b.numel for b in lm.blocks), "forward_s": times["forward"],
        "ratio": times["step"] / two, "ratio_cache_z": times["step_cache_z"] / two,
        "ratio_round_eager": times["round_eager"] / ROUND_STEPS / two,
        "ratio_round_deferred": times["round_deferred"] / ROUND_STEPS / two,
        "ratio_legacy": times["step_legacy"] / two,
        "ratio_round_deferred_torch_path": times["round_deferred_torch_path"] / ROUND_STEPS / two,
        "tensors": tensors, "loss": loss,
    }


def torch_path(fn):
    """fn run through rng.py's torch path instead of the compiled CPU loop (rng_native.py, _rng_native.c): both
    paths side by side in one run."""
    def run():
        with rng_native.off():
            return fn()

    return run


def block_subsets(n: int) -> dict[str, list[int]]:
    """The block subsets A2 compares (block 0 is the embeddings)."""
    return {"all": list(range(n)), "half": list(range(0, n, 2)), "quarter": list(range(0, n, 4)),
            "one layer": [1 if n > 2 else 0], "quarter (no embeddings)": list(range(1, n, 4))}


def fraction_ratios(tensors, reps: int, device: str) -> list[dict]:
    """Cost of one perturbation pass, and of a step's three, on block subsets, against f x the
    all-blocks cost measured the same way (interleaved, one best_of)."""
    sizes = [sum(t.numel() for t in block) for block in tensors]
    subsets = block_subsets(len(sizes))
    fns = {k: (lambda b=b: add_scaled_noise_(tensors, b, 7, 0, dict.fromkeys(b, 1e-3), "rademacher"))
           for k, b in subsets.items()}
    no_forward = lambda: 0.0  # noqa: E731  the step's perturbation work alone
    fns |= {f"step: {k}": (lambda b=b: spsa_step(no_forward, tensors, b, 7, 1e-3, 0.0)) for k, b in subsets.items()}
    # a pass is milliseconds and one event: more rounds than a step needs to find its quiet best
    times = C.best_of(fns, 4 * reps, device)
    total = sum(sizes)
    out = []
    for k, b in subsets.items():
        f = sum(sizes[i] for i in b) / total
        out.append({"subset": k, "fraction": f, "params": sum(sizes[i] for i in b), "pass_s": times[k],
                    "ratio": times[k] / (f * times["all"]),
                    "ratio_step": times[f"step: {k}"] / (f * times["step: all"])})
    return out


@contextmanager
def timed_passes():
    """Time every perturbation pass (`zo._Streams.add_`) while inside: benchmark-only instrumentation,
    so the passes of a real step can be timed without the forwards between them."""
    spent = [0.0]
    original = zo._Streams.add_

    def add_(self, scales):
        start = time.perf_counter()
        original(self, scales)
        spent[0] += time.perf_counter() - start

    zo._Streams.add_ = add_
    try:
        yield spent
    finally:
        zo._Streams.add_ = original


def in_step_ratios(loss, tensors, reps: int, via_torch: bool = False) -> dict[str, float]:
    """A2 as training pays it: the passes' time inside `spsa_step` on the real loss (forward, pass,
    forward between them), per subset, best of `reps` interleaved steps, against f x all blocks."""
    sizes = [sum(t.numel() for t in block) for block in tensors]
    subsets = {k: b for k, b in block_subsets(len(sizes)).items() if k in ("all", "one layer", "quarter (no embeddings)")}
    best = dict.fromkeys(subsets, float("inf"))
    with timed_passes() as spent, (rng_native.off() if via_torch else nullcontext()):
        for r in range(reps + 1):  # the first round warms up
            for k, b in subsets.items():
                spent[0] = 0.0
                spsa_step(loss, tensors, b, r, 1e-3, 0.0)
                best[k] = best[k] if r == 0 else min(best[k], spent[0])
    f = {k: sum(sizes[i] for i in b) / sum(sizes) for k, b in subsets.items()}
    return {k: best[k] / (f[k] * best["all"]) for k in subsets if k != "all"} | {"all_passes_s": best["all"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="tiny,minilm,opt125m")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--client-malloc", action="store_true", help="fix glibc's mmap threshold as clients do")
    args = ap.parse_args()
    if args.client_malloc:
        return_freed_memory_promptly()
    if args.threads:
        torch.set_num_threads(args.threads)
    worst, worst_f, one_layer, in_steps, a1_paths = 0.0, 0.0, [], [], []
    for name in args.models.split(","):
        r = step_ratios(name, args.reps, args.device)
        loss, tensors = r.pop("loss"), r.pop("tensors")
        fr = fraction_ratios(tensors, args.reps, args.device)
        in_step_torch = in_step_ratios(loss, tensors, args.reps, via_torch=True)
        in_step = in_step_ratios(loss, tensors, args.reps)
        for x in fr:
            x["ratio_in_step"] = in_step.get(x["subset"])
            x["ratio_in_step_torch_path"] = in_step_torch.get(x["subset"])
        r["in_step_all_passes_s"] = {"compiled": in_step.pop("all_passes_s"), "torch_path": in_step_torch.pop("all_passes_s")}
        print(json.dumps(r))
        print(json.dumps({"model": name, "fraction_scaling": fr}))
        worst = max(worst, r["ratio_round_deferred"])
        a1_paths.append(f"{name} {r['ratio_round_deferred']:.3f} (torch path {r['ratio_round_deferred_torch_path']:.3f})")
        # A2 is about realistic blocks: subsets under 1M parameters are all fixed per-call cost
        worst_f = max([worst_f] + [x["ratio"] for x in fr if x["subset"] != "one layer" and x["params"] >= 1e6])
        one_layer += [f"{name} {x['ratio']:.3f} (per step {x['ratio_step']:.3f}, in real steps {x['ratio_in_step']:.3f})"
                      for x in fr if x["subset"] == "one layer" and x["params"] >= 1e6]
        in_steps += [f"{name} {k} {v:.3f} (torch path {in_step_torch[k]:.3f})" for k, v in in_step.items()
                     if next(x["params"] for x in fr if x["subset"] == k) >= 1e6]
    print(f"A2 worst perturbation-cost scaling ratio, subsets >= 1M parameters (target <= 1.2): {worst_f:.3f}")
    print(f"A2 one layer >= 1M parameters, one pass (per step of three passes): {', '.join(one_layer) or '-'}")
    print(f"A2 in real steps (each pass after a forward), subsets >= 1M parameters: {', '.join(in_steps) or '-'}")
    print(f"A1 in a client round, compiled CPU loop (torch path): {', '.join(a1_paths)}")
    print(f"A1 worst ZO-step (in a client round) / 2-forward ratio (target <= 1.10): {worst:.3f}")


if __name__ == "__main__":
    main()
