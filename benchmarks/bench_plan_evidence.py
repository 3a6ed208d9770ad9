"""Does the planner's bound J(A) predict what training actually does? (issue 3, item 6)

(a) Fixed activation plans, all feasible under the same (generous) budgets, each used for every round
    of a short fixed budget on SST-2 with `minilm`: rank them by J(A) (docs/theory.md; constants from
    block sizes at the run's lr/K/q/T, then re-estimated from the scalars of a short warm-up, as
    ZorbaPlanner does) and by the measured training loss on held-out training examples after the
    budget; print the Spearman rank correlation.
(b) At equal (heterogeneous, default) memory budgets: planners zorba / all / random / round-robin,
    final dev accuracy on a dev subset, held-out loss, forward passes, model-predicted peak memory.

Writes docs/planner_evidence/{fixed_plans.csv, planners.csv, evidence.png}; prints the correlation
and the ratios last. Single-threaded on purpose (shared machine): about 10 minutes.

    OMP_NUM_THREADS=1 python benchmarks/bench_plan_evidence.py
"""

from __future__ import annotations

import argparse
import copy
import csv
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from zorba import runner as runner_mod  # noqa: E402
from zorba.config import find_data_dir, make_config  # noqa: E402
from zorba.models import load_model  # noqa: E402
from zorba.planner import BoundConstants, ScalarReport, bound  # noqa: E402
from zorba.plans import BlockPlanner, RandomBlocks  # noqa: E402
from zorba.rng import derive_key  # noqa: E402
from zorba.tasks import get_task, read_examples  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "planner_evidence"
MIB = float(1 << 20)


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


# --- one run ----------------------------------------------------------------------------------------
def run_once(cfg, inputs, heldout, base_lm, planner: BlockPlanner | None) -> dict:
    """Train for cfg.rounds with the given planner (None: the one cfg.planner names)."""
    original = runner_mod.make_planner
    if planner is not None:
        runner_mod.make_planner = lambda *a, **k: planner
    try:
        r = runner_mod.Runner(cfg, inputs, lm=copy.deepcopy(base_lm))
    finally:
        runner_mod.make_planner = original
    forwards = count_forwards(r)
    held_ids = r.eval_scorer.encode(heldout)
    held_labels = [e.label for e in heldout]
    started = time.perf_counter()
    state = r.run()
    blocks = [h["blocks"] for h in state.history]
    return {
        "heldout_loss": heldout_loss(r, held_ids, held_labels),
        "train_loss": float(np.mean([h["train_loss"] for h in state.history[-2:]])),
        "dev_accuracy": state.accuracy["final"],
        "forwards": forwards[0],
        "seconds": time.perf_counter() - started,
        "peak_model_mib": predicted_peak(r, blocks),
        "over_budget": over_budget(r, blocks),
        "planner": r.state.server.planner,
    }


def count_forwards(r) -> list[int]:
    counter = [0]
    loss = r.train_scorer.loss

    def counted(ids, labels):
        counter[0] += 1
        return loss(ids, labels)

    r.train_scorer.loss = counted
    return counter


def heldout_loss(r, ids, labels, batch: int = 64) -> float:
    with torch.no_grad():
        parts = [
            r.eval_scorer.loss(ids[i : i + batch], labels[i : i + batch]) * len(ids[i : i + batch])
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


def warmup_constants(cfg, inputs, heldout, base_lm, prior: BoundConstants, rounds: int) -> BoundConstants:
    """Short warm-up with random 3-block plans (varied block sets identify G_l^2), then the planner's
    own estimator on the reported scalars."""
    L = prior.n_blocks
    rec = FixedPlan(np.ones((cfg.clients, L)), inner=RandomBlocks(L, [3] * cfg.clients, seed=cfg.seed + 99))
    run_once(cfg.model_copy(update={"rounds": rounds, "eval_every": rounds}), inputs, heldout, base_lm, rec)
    return prior.estimate_from_scalars(rec.reports)


def zorba_plan(cfg, inputs, heldout, base_lm) -> np.ndarray:
    """The optimised planner's own plan under the part-(a) budgets (first round, prior constants)."""
    r = runner_mod.Runner(cfg, inputs, lm=copy.deepcopy(base_lm))
    given = r.state.server.planner.plan(0, list(range(cfg.clients)))
    A = np.zeros((cfg.clients, len(r.state.lm.blocks)))
    for c, bs in given.items():
        A[c, list(bs)] = 1
    return A


def part_a(args, base_lm, block_sizes) -> tuple[list[dict], dict]:
    cfg = make_config(**common(args), block_fractions=(1.0,), planner="zorba")
    inputs, heldout = split_data(cfg, args.train_size, args.heldout, args.dev)
    prior = BoundConstants.from_block_sizes(
        block_sizes,
        lr=cfg.lr,
        local_steps=cfg.local_steps,
        perturbations=cfg.q,
        rounds=cfg.rounds,
        estimator=cfg.dist,
    )
    est = warmup_constants(cfg, inputs, heldout, base_lm, prior, args.warmup)
    plans = candidate_plans(cfg.clients, len(block_sizes), cfg.seed)
    plans["zorba planner's plan"] = zorba_plan(cfg, inputs, heldout, base_lm)
    initial = heldout_loss_of(cfg, inputs, heldout, base_lm)
    rows = []
    for name, A in plans.items():
        # Same data split and held-out set; the run seed (partition, z, batches) varies: the mean over
        # seeds is what J speaks about (an expectation), one run is mostly ZO noise at this budget.
        runs = [
            run_once(cfg.model_copy(update={"seed": args.seed + i}), inputs, heldout, base_lm, FixedPlan(A))
            for i in range(args.repeats)
        ]
        loss = float(np.mean([r["heldout_loss"] for r in runs]))
        rows.append(
            {
                "plan": name,
                "A": "|".join("".join(str(int(x)) for x in row) for row in A),
                "J_prior": bound(A, prior),
                "J_estimated": bound(A, est),
                "heldout_loss": loss,
                "loss_drop": initial - loss,
                "loss_sd": float(np.std([r["heldout_loss"] for r in runs])),
                "train_loss": float(np.mean([r["train_loss"] for r in runs])),
                "dev_accuracy": float(np.mean([r["dev_accuracy"] for r in runs])),
                "seconds": sum(r["seconds"] for r in runs),
            }
        )
        print(
            f"  {name:32s} J_est={rows[-1]['J_estimated']:.6g} loss={loss:.5f} ({rows[-1]['seconds']:.0f} s)",
            flush=True,
        )
    return rows, {"initial_loss": initial, "G2": est.G2, "zeta2": est.zeta2}


def heldout_loss_of(cfg, inputs, heldout, base_lm) -> float:
    r = runner_mod.Runner(cfg.model_copy(update={"planner": "all"}), inputs, lm=copy.deepcopy(base_lm))
    return heldout_loss(r, r.eval_scorer.encode(heldout), [e.label for e in heldout])


def correlations(rows: list[dict]) -> dict[str, tuple[float, int]]:
    """Spearman(J, held-out loss): all plans (J = inf ranks last) and the plans with finite J."""
    out = {}
    for key in ("J_prior", "J_estimated"):
        J = np.array([r[key] for r in rows])
        loss = np.array([r["heldout_loss"] for r in rows])
        finite = np.isfinite(J)
        big = np.where(finite, J, np.nanmax(J[finite]) * 10 if finite.any() else 1.0)
        out[f"{key}, all plans"] = (float(spearmanr(big, loss).statistic), len(J))
        if finite.sum() >= 3:
            out[f"{key}, finite J"] = (float(spearmanr(J[finite], loss[finite]).statistic), int(finite.sum()))
    return out


# --- part (b) ---------------------------------------------------------------------------------------
def part_b(args, base_lm) -> list[dict]:
    rows = []
    for planner in ("zorba", "all", "random", "round-robin"):
        cfg = make_config(**common(args), planner=planner)
        inputs, heldout = split_data(cfg, args.train_size, args.heldout, args.dev)
        res = run_once(cfg, inputs, heldout, base_lm, None)
        rows.append({"planner": planner, **{k: v for k, v in res.items() if k != "planner"}})
        print(
            f"  {planner:12s} acc={res['dev_accuracy']:.3f} loss={res['heldout_loss']:.5f} "
            f"({res['seconds']:.0f} s)",
            flush=True,
        )
    return rows


# --- outputs ----------------------------------------------------------------------------------------
def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def plot(path: Path, rows_a: list[dict], rows_b: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    finite = [r for r in rows_a if np.isfinite(r["J_estimated"])]
    inf = [r for r in rows_a if not np.isfinite(r["J_estimated"])]
    ax1.scatter([r["J_estimated"] for r in finite], [r["heldout_loss"] for r in finite])
    for r in finite:
        ax1.annotate(r["plan"], (r["J_estimated"], r["heldout_loss"]), fontsize=6)
    for r in inf:
        ax1.axhline(r["heldout_loss"], ls=":", lw=0.8, color="grey")
        ax1.annotate(f"{r['plan']} (J=inf)", (ax1.get_xlim()[0], r["heldout_loss"]), fontsize=6, color="grey")
    ax1.set_xlabel("J(A), estimated constants")
    ax1.set_ylabel("held-out training loss after budget")
    ax1.set_title("(a) fixed plans")
    ax2.bar([r["planner"] for r in rows_b], [r["dev_accuracy"] for r in rows_b])
    ax2.set_ylim(min(r["dev_accuracy"] for r in rows_b) - 0.05, max(r["dev_accuracy"] for r in rows_b) + 0.05)
    ax2.set_ylabel("final dev accuracy (subset)")
    ax2.set_title("(b) planners at equal budgets")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def common(args) -> dict:
    return dict(
        task="sst2",
        model="minilm",
        clients=args.clients,
        rounds=args.rounds,
        local_steps=args.steps,
        batch_size=16,
        max_len=48,
        lr=5e-5,
        mu=1e-3,
        eval_every=args.rounds,
        seed=args.seed,
        measure_memory=False,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--heldout", type=int, default=256)
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=2, help="run seeds averaged per fixed plan in (a)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    base_lm = load_model("minilm")
    block_sizes = np.array([b.numel for b in base_lm.blocks], float)
    started = time.perf_counter()
    print("(a) fixed plans", flush=True)
    rows_a, info = part_a(args, base_lm, block_sizes)
    print("(b) planners at equal budgets", flush=True)
    rows_b = part_b(args, base_lm)
    write_csv(OUT / "fixed_plans.csv", rows_a)
    write_csv(OUT / "planners.csv", rows_b)
    plot(OUT / "evidence.png", rows_a, rows_b)
    report(rows_a, rows_b, info, time.perf_counter() - started)


def report(rows_a: list[dict], rows_b: list[dict], info: dict, seconds: float) -> None:
    print(
        f"\ninitial held-out loss {info['initial_loss']:.5f}; warm-up G2 {np.round(info['G2'], 4).tolist()}, "
        f"zeta2 {np.round(info['zeta2'], 4).tolist()}"
    )
    print(
        f"{'plan':32s} {'J_prior':>12s} {'J_estimated':>12s} {'held-out loss':>14s} {'drop':>9s} {'sd':>8s}"
    )
    for r in sorted(rows_a, key=lambda r: r["heldout_loss"]):
        print(
            f"{r['plan']:32s} {r['J_prior']:12.6g} {r['J_estimated']:12.6g} {r['heldout_loss']:14.5f} {r['loss_drop']:9.5f} {r['loss_sd']:8.5f}"
        )
    print(
        f"\n{'planner':12s} {'dev acc':>8s} {'held-out loss':>14s} {'forwards':>9s} {'peak MiB (model)':>17s} {'over budget':>12s}"
    )
    for r in rows_b:
        print(
            f"{r['planner']:12s} {r['dev_accuracy']:8.3f} {r['heldout_loss']:14.5f} {r['forwards']:9d} "
            f"{r['peak_model_mib']:17.1f} {r['over_budget']:12d}"
        )
    z = next(r for r in rows_b if r["planner"] == "zorba")
    for r in rows_b:
        if r is not z:
            print(
                f"ratio zorba/{r['planner']}: dev acc {z['dev_accuracy'] / r['dev_accuracy']:.3f}, "
                f"held-out loss {z['heldout_loss'] / r['heldout_loss']:.4f}"
            )
    for name, (rho, n) in correlations(rows_a).items():
        print(f"Spearman(J, held-out loss) [{name}, n={n}]: {rho:+.3f}")
    print(f"total {seconds:.0f} s")


if __name__ == "__main__":
    main()
