"""Does the bound rank plans once client heterogeneity is measured instead of bounded? (issue 3)

An oracle check on the one-round measurement of `bench_plan_evidence.py --one-round-repeats`: rebuild
its start w0 (same settings, same warm-up: deterministic), then take *first-order* gradients there,
per client and per minibatch (this script is a measuring instrument, not a client: clients stay
forward-only). From them, for every plan of the measured table:

- `Phi_first_order`  -eta K sum_l <grad_l f, m_l>: the first-order one-round change, m_l the
             protocol's per-block mean of the covering clients' gradients (weights 1/c_l, as the runner).
- `Phi_taylor` + (eta^2 K / 2) sum_l tr(H_ll) sum_{n in C_l} (1/c_l)^2 D_n(A): the ZO noise's
             second-order cost, D_n(A) = sum_{l in S_n} E_xi |grad_l F_n(w0; xi)|^2 (per-client
             minibatch second moments) and tr(H_ll) by Hutchinson probes at w0 (planner/progress.py).
- `Phi`      + (L eta^2 K^2 / 2) sum_l |m_l|^2 with L = max_l L_l: the bound form of Theorem 4.
- `Phi_probed[_separable][_taylor]` the same from shared-seed ZO probes (zorba/probes.py; forward
             passes only, what `zorba run --probes` measures) instead of first-order gradients, with
             the per-block ("raw") or the block-pooled ("separable", the default) Gram estimator.
- `Phi_oracle_separable` first-order constants forced into the separable form (what pooling costs).
- `J2_gram_*` Theorem 2/3 with the heterogeneity term 2 zeta_l^2 (1-P_l)/P_l replaced by the exact
             bias 2 |b_l|^2 = 2 |m_l - grad_l f|^2: what measuring zeta exactly would give the old form.

Prints Spearman(predictor, measured mean delta) with a bootstrap over repeats, next to the evidence
run's own columns, and writes OUT/gram.json. With `--measure R` it also asks the zorba planner for
its plan under the progress objective (probed and oracle constants, the evidence run's budgets) and
runs that plan for the table's first R repeats with the same round seeds, so it is compared with
every plan of the table pair by pair (common random numbers).

    OMP_NUM_THREADS=1 python benchmarks/bench_plan_gram.py --evidence docs/planner_evidence/one_round_merged \
        --out docs/planner_evidence/gram                      # about 15 minutes on one core
    ... --constants-from docs/planner_evidence/gram/gram.json --measure 94 --out OUT  # reuse; + ~15 min per plan
    ... --constants-from docs/planner_evidence/gram/gram_p64.json --subsample 200 --out OUT  # probes by count
    ... --constants-from .../gram_p64.json --reprobe --probe-seed 1 --probes 16 --probe-batch 32 --out OUT
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_plan_evidence as E  # noqa: E402

from zorba import runner as runner_mod  # noqa: E402
from zorba.blocks import block_tensors  # noqa: E402
from zorba.client import TokenizedData  # noqa: E402
from zorba.data import dirichlet_partition  # noqa: E402
from zorba.methods.grad_loss import loss_with_grad  # noqa: E402
from zorba.models import load_model  # noqa: E402
from zorba.planner.progress import (  # noqa: E402
    GRAM_ESTIMATORS,
    ProgressConstants,
    aggregation_weights,
    one_round_change,
    separable_gram,
)
from zorba.probes import probe_client  # noqa: E402
from zorba.replica import Replica  # noqa: E402
from zorba.scoring import Scorer  # noqa: E402
from zorba.tasks import get_task  # noqa: E402


def clients_at_w0(setup):
    """The evidence run's federation at w0: scorer, token ids, labels, each client's indices (the
    runner's partition) and the block tensors of the w0 model."""
    cfg, lm = setup.cfg, setup.warmed
    scorer = Scorer(lm, get_task(cfg.task), cfg.max_len)
    labels = [e.label for e in setup.inputs.train]
    parts = dirichlet_partition(labels, cfg.clients, cfg.alpha, cfg.seed)
    return scorer, scorer.encode(setup.inputs.train), labels, parts, block_tensors(lm.model, lm.blocks)


def client_gradients(setup, batch_size: int) -> tuple[list[list[torch.Tensor]], np.ndarray, np.ndarray]:
    """Per client n: the mean gradient of its local loss per block (flat fp32), E_xi |grad_l F_n|^2 over
    its minibatches, and its data share."""
    cfg, lm = setup.cfg, setup.warmed
    scorer, ids, labels, parts, tensors = clients_at_w0(setup)
    for t in (t for block in tensors for t in block):
        t.requires_grad_(True)
    means, second = [], np.zeros((cfg.clients, len(tensors)))
    for n, part in enumerate(parts):
        total = [torch.zeros(sum(t.numel() for t in block)) for block in tensors]
        batches = [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
        for b in batches:
            lm.model.zero_grad(set_to_none=True)
            loss_with_grad(scorer, lm.model, [ids[i] for i in b], [labels[i] for i in b]).backward()
            for j, block in enumerate(tensors):
                g = torch.cat([t.grad.reshape(-1) for t in block])
                total[j].add_(g, alpha=len(b) / len(part))
                second[n, j] += float(g.square().sum()) / len(batches)
        means.append(total)
        print(f"  client {n}: {len(part)} examples, {len(batches)} minibatches", flush=True)
    for t in (t for block in tensors for t in block):
        t.requires_grad_(False)
    shares = np.array([len(p) for p in parts], float) / sum(len(p) for p in parts)
    return means, second, shares


def oracle_constants(grads, second: np.ndarray, shares: np.ndarray, traces: np.ndarray, cfg, smooth: float):
    """Phi's constants from the first-order gradients: the exact Gram matrices per block."""
    L = len(traces)
    gram = np.array([[[float(gn[b] @ gm[b]) for gm in grads] for gn in grads] for b in range(L)])
    return ProgressConstants(gram, second, traces, shares, cfg.lr, cfg.local_steps, cfg.q, smooth)


def probe_scalars(setup, n_probes: int, batch: int, probe_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The probe scalars (L, P, N) a run would get: each client's shared-seed ZO probes through the
    same `probe_client` the runner calls (on a plain replica of the w0 model), forward only."""
    cfg = setup.cfg
    scorer, ids, labels, parts, _ = clients_at_w0(setup)
    replica, data = Replica(setup.warmed), TokenizedData(ids, labels)
    probes = [probe_client(replica, part, scorer, data, probe_seed, n, n_probes, batch, cfg.mu)
              for n, part in enumerate(parts)]
    return np.stack([a for a, _ in probes], -1), np.stack([b for _, b in probes], -1)


def constants_from_probes(ya: np.ndarray, yb: np.ndarray, estimator: str, probe_batch: int, saved: dict,
                          cfg) -> ProgressConstants:
    """Phi's constants from probe scalars as the runner builds them (runner.progress_constants: the
    estimator, second moments at the training batch size), with the traces measured at w0."""
    run_cfg = cfg.model_copy(update={"probe_estimator": estimator, "probe_batch": probe_batch})
    consts = runner_mod.progress_constants(run_cfg, ya, yb, np.array(saved["traces_w0"]), saved["client_sizes"])
    return dataclasses.replace(consts, smooth=saved["smooth"])


def exact_bias(A: np.ndarray, c: ProgressConstants) -> np.ndarray:
    """|b_l|^2 = |m_l - grad_l f|^2 per block (0 where uncovered) from the Gram matrices."""
    v = aggregation_weights(A) - c.objective_weights[:, None] * A.any(0)
    return np.einsum("nl,lnm,ml->l", v, c.gram, v)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--evidence", type=Path, required=True, help="a one-round run (or --merge) directory")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--train-size", type=int, default=2000)
    ap.add_argument("--heldout", type=int, default=512)
    ap.add_argument("--dev", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--probes", type=int, default=16, help="shared-seed probes per block and client")
    ap.add_argument("--probe-batch", type=int, default=32, help="examples per probe minibatch (two per probe)")
    ap.add_argument("--constants-from", type=Path, default=None,
                    help="a gram.json of an earlier run: reuse its first-order constants and probe scalars")
    ap.add_argument("--reprobe", action="store_true",
                    help="with --constants-from: keep its first-order constants, measure new probes")
    ap.add_argument("--probe-seed", type=int, default=None, help="the probes' round seed [the run seed]")
    ap.add_argument("--subsample", type=int, default=0,
                    help="D > 0: Spearman of each estimator on D random subsets of P probes, P = 4, 8, ...")
    ap.add_argument("--measure", type=int, default=0,
                    help="R > 0: run the plans the progress planner picks (probed and oracle constants) for "
                         "the table's first R one-round repeats (same round seeds: paired with every plan)")
    ap.add_argument("--out", type=Path, default=None)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    args.device = args.resolved_device = "cpu"
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    rows = list(csv.DictReader((args.evidence / "one_round.csv").open()))
    base_lm = load_model("minilm")
    block_sizes = np.array([b.numel for b in base_lm.blocks], float)
    eff = E.effective_sizes(E.make_config(**E.common(args)), base_lm)
    setup = E.fixed_plan_setup(args, base_lm, block_sizes, eff)
    f0 = E.heldout_loss_of(setup.cfg, setup.heldout, setup.warmed)
    print(f"f(w0) = {f0:.9f} (the evidence run's start must match)", flush=True)
    if args.constants_from:
        out = json.loads(args.constants_from.read_text())
        oracle = constants_from_json(out, "oracle", setup.cfg)
        if args.reprobe:
            out.update(probe_info(args, setup))
    else:
        oracle, out = measure_constants(args, setup)
    if "probe_scalars" not in out:
        sys.exit(f"{args.constants_from} keeps no probe scalars; use --reprobe")
    out["f_w0"] = f0
    out["client_sizes"] = [len(p) for p in clients_at_w0(setup)[3]]
    ya, yb = (np.array(out["probe_scalars"][k]) for k in ("ya", "yb"))
    probed = {e: constants_from_probes(ya, yb, e, out["probe_batch"], out, setup.cfg) for e in GRAM_ESTIMATORS}
    out["probed"] = {e: {"gram": c.gram.tolist(), "second": c.second.tolist(), "alignment": c.alignment.tolist()}
                     for e, c in probed.items()}
    variants = {
        "Phi_first_order": dataclasses.replace(oracle, curvature=0 * oracle.curvature, smooth=0.0),
        "Phi_taylor": dataclasses.replace(oracle, smooth=0.0),
        "Phi": oracle,
        "Phi_oracle_separable": dataclasses.replace(oracle, gram=separable_gram(oracle.gram), smooth=0.0),
        **{f"Phi_probed{'' if e == 'raw' else '_' + e}{suffix}": dataclasses.replace(c, smooth=c.smooth * keep)
           for e, c in probed.items() for suffix, keep in (("", 1.0), ("_taylor", 0.0))},
    }
    out["separability"] = separability(oracle.gram)
    out["plans"] = score_table(rows, setup, oracle, variants)
    out["spearman"] = rank_against_measured(out["plans"], list(variants))
    if args.subsample:
        out["subsample"] = subsample_study(ya, yb, out, setup.cfg, rows, args.subsample)
    if args.measure:
        out["progress_plans"] = measure_progress_plans(args, setup, rows, {
            "progress plan (probed, separable)": variants["Phi_probed_separable_taylor"],
            "progress plan (probed, raw)": variants["Phi_probed_taylor"],
            **({} if args.constants_from else {"progress plan (oracle)": variants["Phi_taylor"]})})
    out["seconds"] = time.perf_counter() - started
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gram.json").write_text(json.dumps(out, indent=1))
    report(out)


def measure_constants(args, setup) -> tuple[ProgressConstants, dict]:
    traces = runner_mod._server_traces(setup.cfg, setup.warmed, runner_mod._public_batch(
        setup.cfg, setup.warmed, E.public_sample(setup.cfg), 32))
    grads, second, shares = client_gradients(setup, setup.cfg.batch_size)
    smooth = setup.consts["blk"].smooth  # max_l L_l, measured at the start (Theorem 3)
    oracle = oracle_constants(grads, second, shares, traces, setup.cfg, smooth)
    del grads
    info = {"traces_w0": traces.tolist(), "shares": shares.tolist(), "smooth": smooth,
            "oracle": {"gram": oracle.gram.tolist(), "second": oracle.second.tolist(),
                       "alignment": oracle.alignment.tolist()}}
    return oracle, {**info, **probe_info(args, setup)}


def probe_info(args, setup) -> dict:
    """New probe scalars (L, P, N), kept whole so that smaller P can be studied later."""
    started = time.perf_counter()
    seed = setup.cfg.seed if args.probe_seed is None else args.probe_seed
    ya, yb = probe_scalars(setup, args.probes, args.probe_batch, seed)
    return {"probe_scalars": {"ya": ya.tolist(), "yb": yb.tolist()}, "probes": args.probes,
            "probe_batch": args.probe_batch, "probe_seed": seed, "probe_seconds": time.perf_counter() - started}


def separability(gram: np.ndarray) -> dict:
    """How far the first-order Gram matrices are from one client shape times a per-block scale:
    ||Gamma_l - lambda_l G|| / ||Gamma_l|| per block (Frobenius), and each block's correlation matrix."""
    fit = separable_gram(gram)
    d = np.sqrt(np.einsum("lnn->ln", gram))
    return {"relative_residual": (np.linalg.norm(gram - fit, axis=(1, 2)) / np.linalg.norm(gram, axis=(1, 2))).tolist(),
            "correlation": (gram / np.einsum("ln,lm->lnm", d, d)).tolist()}


def subsample_study(ya: np.ndarray, yb: np.ndarray, saved: dict, cfg, rows: list[dict], draws: int) -> dict:
    """Spearman of Phi_taylor against the measured table for random subsets of P of the probes, per
    estimator: 10/50/90 % over `draws` subsets (seeded), for P = 4, 8, ... up to all of them."""
    measured = np.array([float(r["mean_delta"]) for r in rows])
    plans = np.array([plan_matrix(r["A"]) for r in rows])
    rng = np.random.default_rng(0)
    total, out = ya.shape[1], {}
    for P in sorted({*(p for p in (4, 8, 16, 32, 64) if p < total), total}):
        subsets = [np.arange(total)] if P == total else [rng.choice(total, P, replace=False) for _ in range(draws)]
        out[P] = {}
        for e in GRAM_ESTIMATORS:
            rhos = [E._rho(one_round_change(plans, dataclasses.replace(
                constants_from_probes(ya[:, i], yb[:, i], e, saved["probe_batch"], saved, cfg), smooth=0.0)), measured)
                for i in subsets]
            out[P][e] = np.percentile(rhos, [10, 50, 90]).tolist()
        print(f"  P = {P:3d}: " + "  ".join(f"{e} {np.round(v, 2).tolist()}" for e, v in out[P].items()), flush=True)
    return out


def constants_from_json(saved: dict, key: str, cfg) -> ProgressConstants:
    return ProgressConstants(np.array(saved[key]["gram"]), np.array(saved[key]["second"]),
                             np.array(saved["traces_w0"]), np.array(saved["shares"]), cfg.lr, cfg.local_steps,
                             cfg.q, saved["smooth"])


def score_table(rows: list[dict], setup, oracle: ProgressConstants, variants: dict) -> list[dict]:
    no_zeta = {k: dataclasses.replace(c, zeta2=np.zeros_like(c.zeta2))
               for k, c in setup.consts.items() if k in ("curv_est", "blk_est")}
    out = []
    for r in rows:
        A = plan_matrix(r["A"])
        bias = exact_bias(A, oracle)
        out.append({
            "plan": r["plan"], "A": r["A"], "mean_delta": float(r["mean_delta"]),
            "deltas": [float(x) for x in r["deltas"].split()], "bias_per_block": bias.tolist(),
            **{k: float(one_round_change(A, c)) for k, c in variants.items()},
            "J2_gram_curv": E.plan_bound(A, no_zeta["curv_est"]) + 2 * float(bias.sum()),
            "J2_gram_blk": E.plan_bound(A, no_zeta["blk_est"]) + 2 * float(bias.sum()),
            **{k: float(r[k]) for k in E.J_COLUMNS if k in r},
        })
    return out


def plan_matrix(text: str) -> np.ndarray:
    return np.array([[int(c) for c in row] for row in text.split("|")], float)


def measure_progress_plans(args, setup, rows: list[dict], consts: dict[str, ProgressConstants]) -> list[dict]:
    """The plan the zorba planner picks with each set of constants (the evidence run's generous
    budgets), run for the table's first R repeats with their round seeds, and compared pairwise."""
    cfg = setup.cfg
    scorer = Scorer(setup.warmed, get_task(cfg.task), cfg.max_len)
    held = (scorer.encode(setup.heldout), [e.label for e in setup.heldout])
    f0 = E.heldout_loss(scorer, *held)
    table = {r["plan"]: np.array([float(x) for x in r["deltas"].split()])[: args.measure] for r in rows}
    out, done = [], {}
    for name, c in consts.items():
        planner = E.make_runner(cfg, setup.inputs, setup.warmed, None).state.server.planner
        planner.use_progress(c)
        given = planner.plan(0, list(range(cfg.clients)))
        A = np.zeros((cfg.clients, len(c.curvature)))
        for n, blocks in given.items():
            A[n, list(blocks)] = 1
        key = "|".join("".join(str(int(x)) for x in row) for row in A)
        same = [r["plan"] for r in rows if r["A"] == key]
        if same or key in done:
            deltas = table[same[0]] if same else done[key]
        else:
            deltas = np.array([E.one_round_delta(cfg, setup.inputs, setup.warmed, A,
                                                 E.derive_key(cfg.seed, 0x0E1, rep), held) - f0
                               for rep in range(args.measure)])
        done[key] = deltas
        out.append({"plan": name, "A": key, "same_as": same[0] if same else None,
                    "Phi": float(one_round_change(A, c)), "mean_delta": float(deltas.mean()),
                    "se_delta": float(deltas.std(ddof=1) / np.sqrt(len(deltas))), "deltas": deltas.tolist(),
                    "paired": {p: {"mean_diff": float((deltas - d).mean()),
                                   "se_diff": float((deltas - d).std(ddof=1) / np.sqrt(len(d)))}
                               for p, d in table.items()}})
        print(f"  {name}: {key} mean delta {deltas.mean():+.2e} (se {out[-1]['se_delta']:.1e})", flush=True)
    return out


def report(out: dict) -> None:
    for p in out["plans"]:
        print(f"{p['plan']:30s} delta {p['mean_delta']:+.2e} Phi {p['Phi']:+.2e} Phi_taylor {p['Phi_taylor']:+.2e} "
              f"Phi_probed {p['Phi_probed']:+.2e} Phi_probed_separable {p['Phi_probed_separable']:+.2e} "
              f"J2_gram_curv {p['J2_gram_curv']:.4g}")
    for k, v in out["spearman"].items():
        print(f"Spearman({k}, mean delta) = {v['spearman']:+.2f}  bootstrap 5/50/95 {np.round(v['boot'], 2).tolist()}")
    for p in out.get("progress_plans", []):
        better = [q for q, d in p["paired"].items() if d["mean_diff"] + 2 * d["se_diff"] < 0]
        print(f"{p['plan']}: {p['A']} mean delta {p['mean_delta']:+.2e} +- {p['se_delta']:.1e}; "
              f"more progress than (paired, > 2 SE): {better}")


def rank_against_measured(plans: list[dict], predictors: list[str], boot: int = 1000, seed: int = 0) -> dict:
    D = np.array([p["deltas"] for p in plans])
    picks = np.random.default_rng(seed).integers(0, D.shape[1], size=(boot, D.shape[1]))
    boot_means = D[:, picks].mean(2)
    keys = [*predictors, "J2_gram_curv", "J2_gram_blk", *[k for k in E.J_COLUMNS if k in plans[0]]]
    out = {}
    for k in keys:
        x = E.inf_ranked_last(np.array([p[k] for p in plans]))
        out[k] = {"spearman": E._rho(x, D.mean(1)),
                  "boot": np.percentile([E._rho(x, boot_means[:, b]) for b in range(boot)], [5, 50, 95]).tolist()}
    return out


if __name__ == "__main__":
    main()
