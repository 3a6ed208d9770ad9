"""Does the planner's bound J(A) predict what training actually does? (issue 3, item 6)

(a) Fixed activation plans (>= 8, all feasible under the same generous budgets), each used for every
    round of a fixed budget on SST-2 with `minilm`: rank them by J and by the measured cross-entropy on
    held-out *training* examples after the budget (mean over run seeds); Spearman rank correlation.
    J is Theorem 2 of docs/theory.md (`plan_bound`: finite, an uncovered block adds G_l^2), with the
    constants the planner uses (prior from block sizes at the run's lr/K/q/T, then re-estimated from
    the scalars of a short warm-up with random 3-block plans), in two variants: the noise dimension
    d_l (raw block sizes) and r_l (effective sizes: embedding rows looked up by the public dev split).
    Theorem 1 (`bound`, +inf when a block is uncovered) is kept for comparison.
(b) At equal (heterogeneous, default) memory budgets: planners zorba / all / random / round-robin,
    final dev accuracy on a dev subset, held-out loss, forward passes, model-predicted peak memory,
    and J of the plans each run actually used (`sequence_bound`).
(c) `--one-round-repeats R` (instead of (a) and (b)): the expected progress of ONE round from a common
    start, what the bound's per-round terms speak about, with much less noise than a whole run. The
    weights w0 are where the warm-up ended; each fixed plan of (a) runs R independent single rounds
    from w0 (repeat r: the same round seed, hence the same z and minibatches, for every plan: common
    random numbers), scored by delta = f(w1) - f(w0) on the fixed held-out set. Reports mean delta
    and its SE per plan, Spearman(J, mean delta) per J variant with a bootstrap over repeats, the
    split-half agreement of the measured ranking, and the plan pairs separated by > 2 SE. Writes
    OUT/{one_round.csv, summary.json}, rewritten after every repeat (all plans at the same R).

Writes OUT/{fixed_plans.csv, planners.csv, evidence.png, summary.json} (OUT = --out, default
docs/planner_evidence); the CSV and summary are rewritten after every run, so a run cut short still
leaves its partial results. On a GPU the server's copy of the model is put on the device too (only
to make replay fast; Rademacher replay is bit-exact across devices, zorba.rng).

CPU, tiny (a couple of minutes):
    OMP_NUM_THREADS=1 python benchmarks/bench_plan_evidence.py --rounds 2 --local-steps 1 --seeds 1 \
        --warmup 1 --heldout 64 --dev 64 --train-size 400 --skip-b --out /tmp/evidence_tiny
CPU, the longer single-threaded run of docs/results.md (about 20 minutes, part (a) only):
    OMP_NUM_THREADS=1 python benchmarks/bench_plan_evidence.py --rounds 12 --local-steps 5 --seeds 1 \
        --lr 1e-4 --warmup 2 --skip-b --out docs/planner_evidence/cpu_long
GPU (one H200, target <= 200 s; 25 runs of 24 rounds x 5 steps x 4 clients, about 12,000 client steps
at an estimated 10-15 ms each; results are written as it goes, so the timeout still leaves them):
    timeout 280 python benchmarks/bench_plan_evidence.py --device cuda --threads 8 --rounds 24 \
        --local-steps 5 --seeds 2 --lr 1e-4 --warmup 3 --out docs/planner_evidence/gpu
CPU, one-round progress (c) of docs/results.md (16 repeats x 9 plans, about 40 minutes):
    OMP_NUM_THREADS=1 timeout 2520 python benchmarks/bench_plan_evidence.py --rounds 12 --local-steps 5 \
        --lr 1e-4 --warmup 2 --heldout 512 --one-round-repeats 16 --out docs/planner_evidence/one_round
more repeats with new round seeds, then one table (--merge checks the runs agree on plans and J):
    ... the same --one-round-repeats 40 --repeat-offset 16 --out runs/one_round_16
    python benchmarks/bench_plan_evidence.py --merge docs/planner_evidence/one_round runs/one_round_16 --out OUT
lr 1e-4 was picked on the CPU with the all-blocks plan on held-out *training* examples (6 rounds x 5
steps): 5e-5 lowers the loss by 0.002, 3e-4 raises it (0.535 -> 0.548, ZO noise on 22.7 M
parameters), 1e-4 lowers it by 0.0125 in 12 x 5 steps.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from zorba import runner as runner_mod  # noqa: E402
from zorba.config import RunConfig, find_data_dir, make_config, resolve_device  # noqa: E402
from zorba.models import LoadedModel, load_model  # noqa: E402
from zorba.planner.bound import BoundConstants, bound, plan_bound, sequence_bound  # noqa: E402
from zorba.planner.estimate import ScalarReport, effective_block_sizes  # noqa: E402
from zorba.plans import BlockPlanner, RandomBlocks  # noqa: E402
from zorba.rng import derive_key  # noqa: E402
from zorba.scoring import Scorer  # noqa: E402
from zorba.tasks import get_task, read_examples  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "docs" / "planner_evidence"
MIB = float(1 << 20)
# The J variants ranked against the loss: (column, theorem, noise dimension, constants)
J_COLUMNS = ("J2_eff_est", "J2_eff_prior", "J2_raw_est", "J2_raw_prior", "J1_raw_est", "J2_curv_est", "J2_curv_prior",
             "J2_blk_est", "J2_blk_prior")


class FixedPlan(BlockPlanner):
    """Always the same activation matrix A (clients x blocks); remembers what clients report, so
    the warm-up can re-estimate the bound's constants exactly as ZorbaPlanner.observe does."""

    name = "fixed"

    def __init__(self, A: np.ndarray, inner: BlockPlanner | None = None) -> None:
        self.A, self.inner = np.asarray(A, bool), inner
        self.given: dict[int, dict[int, tuple[int, ...]]] = {}
        self.reports: list[ScalarReport] = []

    def plan(self, round_idx, clients):
        if self.inner is not None:
            out = self.inner.plan(round_idx, clients)
        else:
            out = {c: tuple(int(b) for b in np.flatnonzero(self.A[c])) for c in clients}
        self.given[round_idx] = out
        return out

    def observe(self, round_idx, reports):
        given = self.given.get(round_idx, {})
        self.reports += [
            ScalarReport(c, given[c], np.asarray(s, float)) for c, s in reports.items() if c in given
        ]


# --- data -------------------------------------------------------------------------------------------
def split_data(cfg, train_size: int, heldout_size: int, dev_size: int) -> tuple[runner_mod.Inputs, list]:
    """Seeded disjoint train subsample and held-out training examples (the loss we measure), and a
    dev subset for accuracy."""
    task = get_task(cfg.task)
    root = find_data_dir(cfg)
    train = read_examples(root / cfg.task / "train.tsv", task)
    order = np.random.default_rng(derive_key(cfg.seed, 7)).permutation(len(train))
    sub = [train[i] for i in sorted(order[:train_size])]
    heldout = [train[i] for i in sorted(order[train_size : train_size + heldout_size])]
    dev = read_examples(root / cfg.task / "dev.tsv", task)[:dev_size]
    return runner_mod.Inputs(sub, dev, None), heldout


def public_sample(cfg) -> list:
    """The whole public dev split: the text whose token rows define the embeddings' effective size
    (no client data is read for it; the held-out loss is measured on training examples instead)."""
    return read_examples(find_data_dir(cfg) / cfg.task / "dev.tsv", get_task(cfg.task))


# --- one run ----------------------------------------------------------------------------------------
def make_runner(cfg, inputs, lm, planner: BlockPlanner | None) -> runner_mod.Runner:
    """A runner on a copy of `lm` with the given planner (None: the one cfg.planner names)."""
    original = runner_mod.make_planner
    if planner is not None:
        runner_mod.make_planner = lambda *a, **k: planner
    try:
        return runner_mod.Runner(cfg, inputs, lm=copy.deepcopy(lm))
    finally:
        runner_mod.make_planner = original


def run_once(cfg, inputs, heldout, base_lm, planner: BlockPlanner | None) -> dict:
    """Train for cfg.rounds with the given planner (None: the one cfg.planner names)."""
    r = make_runner(cfg, inputs, base_lm, planner)
    forwards = count_forwards(r)
    held_ids = r.eval_scorer.encode(heldout)
    held_labels = [e.label for e in heldout]
    started = time.perf_counter()
    state = r.run()
    blocks = [h["blocks"] for h in state.history]
    return {
        "heldout_loss": heldout_loss(r.eval_scorer, held_ids, held_labels),
        "train_loss": float(np.mean([h["train_loss"] for h in state.history[-2:]])),
        "dev_accuracy": state.accuracy["final"],
        "forwards": forwards[0],
        "seconds": time.perf_counter() - started,
        "peak_model_mib": predicted_peak(r, blocks),
        "over_budget": over_budget(r, blocks),
        "plans": rounds_as_matrices(r, blocks),
        "planner": r.state.server.planner,
        "model": r.state.lm,  # the global weights after the run (the server's replica)
    }


def count_forwards(r) -> list[int]:
    counter = [0]
    loss = r.train_scorer.loss

    def counted(ids, labels):
        counter[0] += 1
        return loss(ids, labels)

    r.train_scorer.loss = counted
    return counter


def heldout_loss(scorer: Scorer, ids, labels, batch: int = 64) -> float:
    """Mean cross-entropy; examples are batched by length (a batch is padded to its longest, and the
    mean does not depend on the order), which halves the padding on SST-2."""
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    ids, labels = [ids[i] for i in order], [labels[i] for i in order]
    with torch.no_grad():
        parts = [
            scorer.loss(ids[i : i + batch], labels[i : i + batch]) * len(ids[i : i + batch])
            for i in range(0, len(ids), batch)
        ]
    return float(sum(parts) / len(ids))


def rounds_as_matrices(r, blocks: list[dict]) -> list[np.ndarray]:
    L = r.memory_model.n_blocks
    out = []
    for rnd in blocks:
        A = np.zeros((r.cfg.clients, L))
        for c, bs in rnd.items():
            A[int(c), bs] = 1
        out.append(A)
    return out


def predicted_peak(r, blocks: list[dict]) -> float:
    """Largest per-client memory (memory model, MiB) over the rounds: what the budgets constrain."""
    return max(float(r.memory_model.client_memory(A).max()) for A in rounds_as_matrices(r, blocks)) / MIB


def over_budget(r, blocks: list[dict]) -> int:
    """(client, round) pairs whose plan exceeds the client's budget under the memory model."""
    budgets = np.array([p.memory_bytes for p in r.profiles])
    return int(
        sum(
            (r.memory_model.client_memory(A) > budgets * (1 + 1e-9)).sum()
            for A in rounds_as_matrices(r, blocks)
        )
    )


# --- the bound's constants --------------------------------------------------------------------------
def effective_sizes(cfg, base_lm) -> np.ndarray:
    """r_l: block sizes less the embedding rows the public sample never looks up."""
    scorer = Scorer(base_lm, get_task(cfg.task), cfg.max_len)
    ids = scorer.encode(public_sample(cfg))
    forward = lambda: [scorer.logits(ids[i : i + 64]) for i in range(0, len(ids), 64)]  # noqa: E731
    return effective_block_sizes(base_lm.model, base_lm.blocks, forward)


def priors(cfg, block_sizes: np.ndarray, eff: np.ndarray, base_lm) -> dict[str, BoundConstants]:
    run = dict(lr=cfg.lr, local_steps=cfg.local_steps, perturbations=cfg.q, rounds=cfg.rounds, estimator=cfg.dist)
    curv = runner_mod.server_curvature_sizes(cfg, base_lm, public_sample(cfg))  # as `zorba run --curvature-sizes`
    smooth, blk = runner_mod.server_block_constants(cfg, base_lm, public_sample(cfg))  # as --block-smoothness
    return {
        "raw": BoundConstants.from_block_sizes(block_sizes, **run),
        "eff": BoundConstants.from_block_sizes(block_sizes, effective_sizes=eff, **run),
        "curv": BoundConstants.from_block_sizes(block_sizes, effective_sizes=curv, **run),
        "blk": BoundConstants.from_block_sizes(block_sizes, effective_sizes=blk, block_smooth=smooth, **run),
    }


def warmup(cfg, inputs, heldout, base_lm, n_blocks: int, rounds: int) -> tuple[list[ScalarReport], LoadedModel]:
    """Short warm-up with random 3-block plans (varied block sets identify G_l^2): the clients'
    reports and the weights it ends at."""
    rec = FixedPlan(np.ones((cfg.clients, n_blocks)), inner=RandomBlocks(n_blocks, [3] * cfg.clients, seed=cfg.seed + 99))
    res = run_once(cfg.model_copy(update={"rounds": rounds, "eval_every": rounds}), inputs, heldout, base_lm, rec)
    return rec.reports, res["model"]


def all_bounds(A: np.ndarray, consts: dict[str, BoundConstants]) -> dict[str, float]:
    return {
        "J2_eff_est": plan_bound(A, consts["eff_est"]),
        "J2_eff_prior": plan_bound(A, consts["eff"]),
        "J2_raw_est": plan_bound(A, consts["raw_est"]),
        "J2_raw_prior": plan_bound(A, consts["raw"]),
        "J1_raw_est": bound(A, consts["raw_est"]),
        "J2_curv_est": plan_bound(A, consts["curv_est"]),
        "J2_curv_prior": plan_bound(A, consts["curv"]),
        "J2_blk_est": plan_bound(A, consts["blk_est"]),
        "J2_blk_prior": plan_bound(A, consts["blk"]),
    }


# --- part (a) ---------------------------------------------------------------------------------------
def candidate_plans(N: int, L: int, seed: int) -> dict[str, np.ndarray]:
    """Diverse fixed plans (clients x blocks); block 0 is the embeddings."""
    plans = {}
    plans["all blocks"] = np.ones((N, L))
    A = np.zeros((N, L))
    A[:, 0] = 1
    plans["embeddings only"] = A
    A = np.zeros((N, L))
    A[np.arange(N), 1 + np.arange(N) % (L - 1)] = 1
    plans["1 distinct layer each"] = A
    A = np.zeros((N, L))
    A[:, 1:] = 1
    plans["all layers, no embeddings"] = A
    A = np.zeros((N, L))
    for n in range(N):
        A[n, [(2 * n) % L, (2 * n + 1) % L]] = 1
    plans["2 blocks each (cover)"] = A
    A = np.zeros((N, L))
    for n in range(N):
        A[n, [(2 * n + i) % L for i in range(4)]] = 1
    plans["4 blocks each (cover x2)"] = A
    A = np.zeros((N, L))
    A[: N // 2] = 1
    A[N // 2 :, L - 1] = 1
    plans["half clients all blocks"] = A
    A = np.zeros((N, L))
    A[:, 1:] = 1
    A[0, 0] = 1
    plans["layers + 1 embeddings holder"] = A
    rng = np.random.default_rng(seed)
    plans["random (3 each)"] = np.array(
        [np.isin(np.arange(L), rng.choice(L, 3, replace=False)) for _ in range(N)], float
    )
    return plans


def zorba_plan(cfg, inputs, base_lm) -> np.ndarray:
    """The optimised planner's own plan under the part-(a) budgets (first round, prior constants)."""
    r = runner_mod.Runner(cfg, inputs, lm=copy.deepcopy(base_lm))
    given = r.state.server.planner.plan(0, list(range(cfg.clients)))
    A = np.zeros((cfg.clients, len(r.state.lm.blocks)))
    for c, bs in given.items():
        A[c, list(bs)] = 1
    return A


def distinct_plans(args, cfg, inputs, base_lm) -> dict[str, np.ndarray]:
    """The candidate plans plus the planner's own, unless it repeats one (a repeat would count the
    same point twice in the correlation)."""
    plans = candidate_plans(cfg.clients, len(base_lm.blocks), cfg.seed)
    mine = zorba_plan(cfg, inputs, base_lm)
    same = [name for name, A in plans.items() if np.array_equal(A, mine)]
    if same:
        print(f"  zorba planner's plan = '{same[0]}' (not run twice)", flush=True)
    else:
        plans["zorba planner's plan"] = mine
    return plans


@dataclass
class FixedPlanSetup:
    """What every fixed plan shares: config (generous budgets), data, the bound's constants (prior
    and re-estimated from the warm-up) and the weights the warm-up ended at."""

    cfg: RunConfig
    inputs: runner_mod.Inputs
    heldout: list
    consts: dict[str, BoundConstants]
    warmed: LoadedModel

    def info(self) -> dict:
        est = self.consts
        return {"G2": est["eff_est"].G2.tolist(), "zeta2": est["eff_est"].zeta2.tolist(),
                "G2_raw_prior_fit": est["raw_est"].G2.tolist()}


def fixed_plan_setup(args, base_lm, block_sizes, eff) -> FixedPlanSetup:
    cfg = make_config(**common(args), block_fractions=(1.0,), planner="zorba")
    inputs, heldout = split_data(cfg, args.train_size, args.heldout, args.dev)
    consts = priors(cfg, block_sizes, eff, base_lm)
    reports, warmed = warmup(cfg, inputs, heldout, base_lm, len(block_sizes), args.warmup)
    for name in ("raw", "eff", "curv", "blk"):
        consts[f"{name}_est"] = consts[name].estimate_from_scalars(reports)
    return FixedPlanSetup(cfg, inputs, heldout, consts, warmed)


def part_a(args, base_lm, block_sizes, eff, progress) -> tuple[list[dict], dict]:
    setup = fixed_plan_setup(args, base_lm, block_sizes, eff)
    cfg, inputs, heldout, consts = setup.cfg, setup.inputs, setup.heldout, setup.consts
    initial = heldout_loss_of(cfg, heldout, base_lm)
    info = {"initial_loss": initial, **setup.info()}
    rows = []
    for name, A in distinct_plans(args, cfg, inputs, base_lm).items():
        # Same data split and held-out set; the run seed (partition, z, batches) varies: the mean over
        # seeds is what J speaks about (an expectation).
        runs = [
            run_once(cfg.model_copy(update={"seed": args.seed + i}), inputs, heldout, base_lm, FixedPlan(A))
            for i in range(args.seeds)
        ]
        losses = [r["heldout_loss"] for r in runs]
        rows.append(
            {
                "plan": name,
                "A": "|".join("".join(str(int(x)) for x in row) for row in A),
                **all_bounds(A, consts),
                "heldout_loss": float(np.mean(losses)),
                "loss_drop": initial - float(np.mean(losses)),
                "loss_sd": float(np.std(losses)),
                "losses": " ".join(f"{x:.6f}" for x in losses),
                "train_loss": float(np.mean([r["train_loss"] for r in runs])),
                "dev_accuracy": float(np.mean([r["dev_accuracy"] for r in runs])),
                "seconds": sum(r["seconds"] for r in runs),
            }
        )
        r = rows[-1]
        print(f"  {name:30s} J2_eff_est={r['J2_eff_est']:.6g} loss={r['heldout_loss']:.5f} "
              f"sd={r['loss_sd']:.5f} ({r['seconds']:.0f} s)", flush=True)
        progress(rows, [], info)
    return rows, {**info, "consts": consts}


def heldout_loss_of(cfg, heldout, lm: LoadedModel) -> float:
    scorer = Scorer(lm, get_task(cfg.task), cfg.max_len)
    return heldout_loss(scorer, scorer.encode(heldout), [e.label for e in heldout])


def correlations(rows: list[dict]) -> dict[str, dict]:
    """Spearman(J, mean held-out loss) per J variant over all plans (J = inf ranks last), and per run
    seed (how much of the ranking one seed's noise moves)."""
    out = {}
    loss = np.array([r["heldout_loss"] for r in rows])
    per_seed = np.array([[float(x) for x in r["losses"].split()] for r in rows])
    for key in J_COLUMNS:
        J = np.array([r[key] for r in rows])
        finite = np.isfinite(J)
        ranked = inf_ranked_last(J)
        out[key] = {
            "spearman": _rho(ranked, loss),
            "per_seed": [_rho(ranked, per_seed[:, i]) for i in range(per_seed.shape[1])],
            "n_plans": len(J),
            "n_finite": int(finite.sum()),
        }
    return out


def inf_ranked_last(J: np.ndarray) -> np.ndarray:
    """J with +inf replaced by a value above every finite one (ties among the infinite ones)."""
    finite = np.isfinite(J)
    return np.where(finite, J, np.nanmax(J[finite]) * 10 if finite.any() else 1.0)


def _rho(x: np.ndarray, y: np.ndarray) -> float:
    return float(spearmanr(x, y).statistic) if len(x) >= 3 else float("nan")


# --- one-round progress from a common start ---------------------------------------------------------
def one_round(args, base_lm, block_sizes, eff, write) -> tuple[list[dict], dict]:
    """Every plan, R times, runs ONE round (all clients, K local steps, the server's per-block
    aggregation) from the same weights w0 (where the warm-up ended) and is scored by
    delta = f(w1) - f(w0) on the fixed held-out set: the expected one-round progress, which is what
    the bound's per-round terms speak about. Repeat r uses the same round seed (z and minibatches)
    for every plan, so differences between plans are measured with common random numbers. Repeats
    are the outer loop: a run cut short still has every plan at the same number of repeats."""
    setup = fixed_plan_setup(args, base_lm, block_sizes, eff)
    cfg = setup.cfg
    scorer = Scorer(setup.warmed, get_task(cfg.task), cfg.max_len)
    held = (scorer.encode(setup.heldout), [e.label for e in setup.heldout])
    f0 = heldout_loss(scorer, *held)
    info = {"initial_loss": f0, **setup.info()}
    print(f"  f(w0) on {len(held[0])} held-out examples: {f0:.6f}", flush=True)
    plans = distinct_plans(args, cfg, setup.inputs, base_lm)
    deltas: dict[str, list[float]] = {name: [] for name in plans}
    seconds = dict.fromkeys(plans, 0.0)
    rows: list[dict] = []
    for rep in range(args.repeat_offset, args.repeat_offset + args.one_round_repeats):
        seed = derive_key(cfg.seed, 0x0E1, rep)
        for name, A in plans.items():
            started = time.perf_counter()
            deltas[name].append(one_round_delta(cfg, setup.inputs, setup.warmed, A, seed, held) - f0)
            seconds[name] += time.perf_counter() - started
        rows = one_round_rows(plans, deltas, seconds, setup.consts)
        print(f"  repeat {rep + 1}: " + " ".join(f"{d[-1]:+.5f}" for d in deltas.values()), flush=True)
        write(rows, info)
    return rows, info


def merge_one_round(dirs: list[Path], out: Path) -> None:
    """One table from runs with disjoint repeats (--repeat-offset) of the same settings: the deltas
    concatenated per plan; the J columns must agree where the runs share them (same seed, same
    warm-up, same constants), and the run with the most columns supplies them."""
    runs = [list(csv.DictReader((d / "one_round.csv").open())) for d in dirs]
    base = max(runs, key=lambda rows: len(rows[0]))
    rows = []
    for i, row in enumerate(base):
        deltas, seconds = [], 0.0
        for run in runs:
            other = run[i]
            if (other["plan"], other["A"]) != (row["plan"], row["A"]):
                raise SystemExit(f"merge: {other['plan']!r} does not match {row['plan']!r}: not the same plans")
            for key in J_COLUMNS:
                if key in other and not np.isclose(float(other[key]), float(row[key]), rtol=1e-9):
                    raise SystemExit(f"merge: {key} of {row['plan']!r} differs between runs: not the same settings")
            deltas += [float(x) for x in other["deltas"].split()]
            seconds += float(other["seconds"])
        d = np.array(deltas)
        rows.append({**{k: float(row[k]) for k in J_COLUMNS}, "plan": row["plan"], "A": row["A"],
                     "mean_delta": float(d.mean()), "se_delta": float(d.std(ddof=1) / np.sqrt(len(d))),
                     "repeats": len(d), "deltas": " ".join(f"{x:.7f}" for x in d), "seconds": seconds})
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "one_round.csv", rows)
    summary = {"merged_from": [str(d) for d in dirs], **one_round_summary(rows),
               "plans": [{k: r[k] for k in ("plan", "A", "mean_delta", "se_delta", *J_COLUMNS)} for r in rows]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    report_one_round(rows, {**summary, "f_w0_heldout": float("nan"), "seconds": sum(r["seconds"] for r in rows),
                            "device": "merged"})


def one_round_delta(cfg, inputs, w0: LoadedModel, A: np.ndarray, seed: int, held) -> float:
    """f(w1) on the held-out set after one round of plan A from w0 with the given round seed."""
    r = make_runner(cfg, inputs, w0, FixedPlan(A))
    # Only the round seed changes between repeats (it draws z and the minibatches); the federation
    # (the Dirichlet partition, from cfg.seed) stays the same.
    r.state.server.seed = seed
    r.run_round()
    return heldout_loss(r.eval_scorer, *held)


def one_round_rows(plans: dict[str, np.ndarray], deltas: dict[str, list[float]], seconds: dict[str, float],
                   consts: dict[str, BoundConstants]) -> list[dict]:
    rows = []
    for name, A in plans.items():
        d = np.array(deltas[name])
        rows.append({
            "plan": name,
            "A": "|".join("".join(str(int(x)) for x in row) for row in A),
            **all_bounds(A, consts),
            "mean_delta": float(d.mean()),
            "se_delta": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("nan"),
            "repeats": len(d),
            "deltas": " ".join(f"{x:.7f}" for x in d),
            "seconds": seconds[name],
        })
    return rows


def one_round_summary(rows: list[dict], boot: int = 1000, seed: int = 0) -> dict:
    """Spearman(J, mean delta) per J variant (positive: lower J, more progress), with a bootstrap
    over repeats (resampled jointly for all plans, keeping the common random numbers) and the
    split-half agreement of the measured ranking with itself; and how many plan pairs the repeats
    separate by more than 2 standard errors (paired: the SE of the per-repeat difference)."""
    D = np.array([[float(x) for x in r["deltas"].split()] for r in rows])  # plans x repeats
    mean = D.mean(1)
    R = D.shape[1]
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, R, size=(boot, R))
    boot_means = D[:, picks].mean(2)  # plans x boot
    out: dict = {"repeats": R, "n_plans": len(rows)}
    out["spearman_J_vs_mean_delta"] = {}
    for key in J_COLUMNS:
        J = inf_ranked_last(np.array([r[key] for r in rows]))
        boots = np.array([_rho(J, boot_means[:, b]) for b in range(boot)])
        out["spearman_J_vs_mean_delta"][key] = {
            "spearman": _rho(J, mean),
            "bootstrap_5_50_95": np.nanpercentile(boots, [5, 50, 95]).tolist(),
        }
    half = R // 2
    out["split_half_spearman"] = _rho(D[:, :half].mean(1), D[:, half:].mean(1)) if half >= 2 else float("nan")
    out["separated_pairs"] = separated_pairs(D)
    return out


def separated_pairs(D: np.ndarray) -> dict:
    """Plan pairs whose mean deltas differ by more than 2 SE: paired (common random numbers) and as
    if the plans had been run independently (the two SEs added in quadrature)."""
    P, R = D.shape
    se = D.std(1, ddof=1) / np.sqrt(R)
    paired = unpaired = 0
    for i in range(P):
        for j in range(i + 1, P):
            diff = D[i] - D[j]
            gap = abs(diff.mean())
            paired += gap > 2 * diff.std(ddof=1) / np.sqrt(R)
            unpaired += gap > 2 * np.hypot(se[i], se[j])
    return {"pairs": P * (P - 1) // 2, "paired_2se": int(paired), "unpaired_2se": int(unpaired)}


def write_one_round(out: Path, args, rows: list[dict], info: dict, seconds: float, done: bool) -> dict:
    write_csv(out / "one_round.csv", rows)
    summary = {
        **summary_header(args, info, seconds, done, loss_key="f_w0_heldout"),
        **(one_round_summary(rows) if rows and rows[0]["repeats"] >= 2 else {}),
        "plans": [{k: r[k] for k in ("plan", "A", "mean_delta", "se_delta", *J_COLUMNS)} for r in rows],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def report_one_round(rows: list[dict], summary: dict) -> None:
    print(f"\nf(w0) = {summary['f_w0_heldout']:.6f}; {summary['repeats']} repeats per plan")
    print(f"{'plan':30s} {'J2_eff_est':>11s} {'J2_curv_est':>11s} {'mean delta':>11s} {'se':>9s}")
    for r in sorted(rows, key=lambda r: r["mean_delta"]):
        print(f"{r['plan']:30s} {r['J2_eff_est']:11.5g} {r['J2_curv_est']:11.5g} {r['mean_delta']:+11.6f} "
              f"{r['se_delta']:9.6f}")
    for key, c in summary["spearman_J_vs_mean_delta"].items():
        lo, mid, hi = c["bootstrap_5_50_95"]
        print(f"Spearman({key}, mean delta): {c['spearman']:+.3f} (bootstrap 5-95%: {lo:+.2f} .. {hi:+.2f})")
    sep = summary["separated_pairs"]
    print(f"split-half Spearman of the measured ranking: {summary['split_half_spearman']:+.3f}; pairs separated "
          f"by > 2 SE: {sep['paired_2se']} of {sep['pairs']} paired, {sep['unpaired_2se']} unpaired")
    print(f"total {summary['seconds']:.0f} s on {summary['device']}")


# --- part (b) ---------------------------------------------------------------------------------------
def part_b(args, base_lm, consts: dict[str, BoundConstants], progress, rows_a, info) -> list[dict]:
    rows = []
    for planner in ("zorba", "all", "random", "round-robin"):
        cfg = make_config(**common(args), planner=planner)
        inputs, heldout = split_data(cfg, args.train_size, args.heldout, args.dev)
        res = run_once(cfg, inputs, heldout, base_lm, None)
        J = sequence_bound(res["plans"], consts["eff_est"])
        rows.append({"planner": planner, "J2_eff_est_of_run": J,
                     **{k: v for k, v in res.items() if k not in ("planner", "plans", "model")}})
        print(
            f"  {planner:12s} acc={res['dev_accuracy']:.3f} loss={res['heldout_loss']:.5f} J={J:.6g} "
            f"({res['seconds']:.0f} s)",
            flush=True,
        )
        progress(rows_a, rows, info)
    return rows


# --- outputs ----------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def summary_header(args, info: dict, seconds: float, done: bool, loss_key: str) -> dict:
    """What every summary.json starts with: settings, timing, the starting loss and the constants."""
    return {
        "complete": done,
        "seconds": seconds,
        "device": args.resolved_device,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "resolved_device"},
        loss_key: info.get("initial_loss"),
        "effective_sizes": info.get("effective_sizes"),
        "block_sizes": info.get("block_sizes"),
        "G2_estimated": info.get("G2"),
        "zeta2_estimated": info.get("zeta2"),
    }


def write_outputs(out: Path, args, rows_a, rows_b, info, seconds: float, done: bool) -> dict:
    write_csv(out / "fixed_plans.csv", rows_a)
    write_csv(out / "planners.csv", rows_b)
    summary = {
        **summary_header(args, info, seconds, done, loss_key="initial_heldout_loss"),
        "spearman_J_vs_heldout_loss": correlations(rows_a) if len(rows_a) >= 3 else {},
        "planners": [{k: r[k] for k in ("planner", "dev_accuracy", "heldout_loss", "J2_eff_est_of_run")} for r in rows_b],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def plot(path: Path, rows_a: list[dict], rows_b: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    x = [r["J2_eff_est"] for r in rows_a]
    y = [r["heldout_loss"] for r in rows_a]
    ax1.errorbar(x, y, yerr=[r["loss_sd"] for r in rows_a], fmt="o", ms=4, capsize=2)
    for r in rows_a:
        ax1.annotate(r["plan"], (r["J2_eff_est"], r["heldout_loss"]), fontsize=6)
    ax1.set_xscale("log")
    ax1.set_xlabel("J(A), Theorem 2, effective sizes, estimated constants")
    ax1.set_ylabel("held-out training loss after budget (mean, sd over seeds)")
    ax1.set_title("(a) fixed plans")
    if rows_b:
        ax2.bar([r["planner"] for r in rows_b], [r["heldout_loss"] for r in rows_b])
        lo, hi = min(r["heldout_loss"] for r in rows_b), max(r["heldout_loss"] for r in rows_b)
        ax2.set_ylim(lo - 0.2 * (hi - lo + 1e-3), hi + 0.2 * (hi - lo + 1e-3))
        ax2.set_ylabel("held-out training loss")
        ax2.set_title("(b) planners at equal budgets")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def common(args) -> dict:
    return dict(
        task="sst2",
        model="minilm",
        clients=args.clients,
        rounds=args.rounds,
        local_steps=args.local_steps,
        batch_size=16,
        max_len=48,
        lr=args.lr,
        mu=1e-3,
        eval_every=args.rounds,
        seed=args.seed,
        measure_memory=False,
        device=args.device,
    )


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: the shared machine)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--local-steps", type=int, default=3)
    ap.add_argument("--lr", type=float, default=5e-5)
    ap.add_argument("--seeds", type=int, default=2, help="run seeds averaged per fixed plan in (a)")
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--heldout", type=int, default=256)
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-b", action="store_true", help="only part (a)")
    ap.add_argument("--one-round-repeats", type=int, default=0,
                    help="R > 0: instead of (a) and (b), R one-round repeats per fixed plan from the warm-up's weights")
    ap.add_argument("--repeat-offset", type=int, default=0,
                    help="index of the first one-round repeat: extends an earlier run with new round seeds")
    ap.add_argument("--merge", type=Path, nargs="+", default=None,
                    help="combine the one_round.csv of these runs (disjoint repeats, same settings) into --out")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.merge:
        merge_one_round(args.merge, args.out)
        return
    args.resolved_device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    base_lm = load_model("minilm")
    base_lm.model.to(args.resolved_device)  # the server's copy too (replay speed); see the docstring
    block_sizes = np.array([b.numel for b in base_lm.blocks], float)
    eff = effective_sizes(make_config(**common(args)), base_lm)
    info: dict = {"effective_sizes": eff.tolist(), "block_sizes": block_sizes.tolist()}

    def progress(rows_a, rows_b, extra) -> None:
        info.update({k: v for k, v in extra.items() if k != "consts"})
        write_outputs(args.out, args, rows_a, rows_b, info, time.perf_counter() - started, done=False)

    if args.one_round_repeats > 0:
        main_one_round(args, base_lm, block_sizes, eff, info, started)
        return
    print(f"(a) fixed plans; effective sizes {eff.astype(int).tolist()}", flush=True)
    rows_a, info_a = part_a(args, base_lm, block_sizes, eff, progress)
    rows_b = []
    if not args.skip_b:
        print("(b) planners at equal budgets", flush=True)
        rows_b = part_b(args, base_lm, info_a["consts"], progress, rows_a, info_a)
    info.update({k: v for k, v in info_a.items() if k != "consts"})
    summary = write_outputs(args.out, args, rows_a, rows_b, info, time.perf_counter() - started, done=True)
    plot(args.out / "evidence.png", rows_a, rows_b)
    report(rows_a, rows_b, summary)


def main_one_round(args, base_lm, block_sizes, eff, info: dict, started: float) -> None:
    def write(rows, extra, done=False) -> dict:
        info.update(extra)
        return write_one_round(args.out, args, rows, info, time.perf_counter() - started, done)

    print(f"one-round progress, {args.one_round_repeats} repeats; effective sizes {eff.astype(int).tolist()}", flush=True)
    rows, extra = one_round(args, base_lm, block_sizes, eff, write)
    report_one_round(rows, write(rows, extra, done=True))


def report(rows_a: list[dict], rows_b: list[dict], summary: dict) -> None:
    print(f"\ninitial held-out loss {summary['initial_heldout_loss']:.5f}; warm-up G2 "
          f"{np.round(summary['G2_estimated'], 4).tolist()}, zeta2 {np.round(summary['zeta2_estimated'], 4).tolist()}")
    print(f"{'plan':30s} {'J2_eff_est':>11s} {'J2_raw_est':>11s} {'J1_raw_est':>11s} {'held-out':>9s} {'drop':>8s} {'sd':>8s}")
    for r in sorted(rows_a, key=lambda r: r["heldout_loss"]):
        print(f"{r['plan']:30s} {r['J2_eff_est']:11.5g} {r['J2_raw_est']:11.5g} {r['J1_raw_est']:11.5g} "
              f"{r['heldout_loss']:9.5f} {r['loss_drop']:8.5f} {r['loss_sd']:8.5f}")
    if rows_b:
        print(f"\n{'planner':12s} {'dev acc':>8s} {'held-out loss':>14s} {'J of run':>10s} {'forwards':>9s} "
              f"{'peak MiB (model)':>17s} {'over budget':>12s}")
        for r in rows_b:
            print(f"{r['planner']:12s} {r['dev_accuracy']:8.3f} {r['heldout_loss']:14.5f} {r['J2_eff_est_of_run']:10.5g} "
                  f"{r['forwards']:9d} {r['peak_model_mib']:17.1f} {r['over_budget']:12d}")
        z = next(r for r in rows_b if r["planner"] == "zorba")
        for r in rows_b:
            if r is not z:
                print(f"ratio zorba/{r['planner']}: dev acc {z['dev_accuracy'] / r['dev_accuracy']:.3f}, "
                      f"held-out loss {z['heldout_loss'] / r['heldout_loss']:.4f}")
    for key, c in summary["spearman_J_vs_heldout_loss"].items():
        seeds = ", ".join(f"{x:+.2f}" for x in c["per_seed"])
        print(f"Spearman({key}, held-out loss) over {c['n_plans']} plans: {c['spearman']:+.3f} (per seed: {seeds})")
    print(f"total {summary['seconds']:.0f} s on {summary['device']}")


if __name__ == "__main__":
    main()
