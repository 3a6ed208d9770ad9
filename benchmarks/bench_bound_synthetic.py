"""Does J predict training when its constants are known exactly? (issue 3, item 6, controlled half)

On SST-2 the plan effects are within seed noise and the constants (L, G_l^2, zeta_l^2) are estimates
(docs/results.md). Here every client's loss is a block-diagonal quadratic with minibatch noise, so
L, Delta, G_l^2 and zeta_l^2 are computed, not estimated, and runs are cheap enough for many seeds:

    F_n(w; xi) = sum_l h_l / 2 |w_l - w*_{n,l}|^2 + <xi, w>,   xi ~ N(0, s^2 / d I) per local step

The training is zorba's own: `zo.spsa_step` (Rademacher z from zorba.rng, in place, active blocks
only) for K local steps per client, then each block becomes the mean of the covering clients' copies
(the server's per-block aggregation, docs/theory.md section 1); uncovered blocks stay. For the same
10 plans as bench_plan_evidence.py we measure what Theorem 2 bounds, the mean over rounds of
|grad f(w_t)|^2, and the final excess loss f(w_T) - f*, averaged over seeds, and print the Spearman
rank correlations with J2 (`planner.plan_bound`, exact constants) last, for three versions of J2:

- shipped: global L = max h_l, noise dimension d_l (docs/theory.md, Theorem 2);
- curvature sizes: global L, r_l = tr(H_ll) / L = h_l d_l / L (section 12);
- per-block smoothness: L_l = h_l, cross-block eps = 0 (exact: the Hessian is block-diagonal), r_l = d_l
  (Theorem 3, section 13).

Two instances: "embeddings" (one 6x larger block with low curvature, curvatures 0.5-4, as before) and
"spread" (curvatures 0.05-10, where per-block smoothness should matter most). `--size-scale` shrinks
every block (0.1: d = 240), which with more rounds reaches the regime where J2 is below the trivial
bound sum_l G_l^2 (A3) for some plans; the last column says for how many plans it is.

    python benchmarks/bench_bound_synthetic.py [--seeds 10] [--rounds 30] [--lrs 1e-4 4e-4]
        [--instance embeddings spread] [--size-scale 1.0]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch
from scipy.stats import spearmanr

from zorba.planner import BoundConstants
from zorba.planner.bound import plan_bound
from zorba.rng import derive_key
from zorba.zo import spsa_step

PLANS = {  # clients x blocks (block 0: the large "embeddings" block), as in bench_plan_evidence.py
    "all blocks": "1111111|1111111|1111111|1111111",
    "embeddings only": "1000000|1000000|1000000|1000000",
    "1 distinct layer each": "0100000|0010000|0001000|0000100",
    "all layers, no embeddings": "0111111|0111111|0111111|0111111",
    "2 blocks each (cover)": "1100000|0011000|0000110|1000001",
    "4 blocks each (cover x2)": "1111000|0011110|1000111|1110001",
    "half clients all blocks": "1111111|1111111|0000001|0000001",
    "layers + 1 embeddings holder": "1111111|0111111|0111111|0111111",
    "random (3 each)": "0001101|1000011|0001011|0001011",
    "last layer only": "0000001|0000001|0000001|0000001",
}


def as_matrix(rows: str) -> np.ndarray:
    return np.array([[c == "1" for c in row] for row in rows.split("|")], dtype=bool)


class Problem:
    """Block-diagonal quadratics with client-specific optima; every constant of the bound in closed form."""

    def __init__(self, sizes: list[int], curv: list[float], hetero: list[float], noise: float, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.sizes, self.h = sizes, np.array(curv)
        self.N, self.noise = 4, noise
        self.d = sum(sizes)
        self.center = [rng.normal(0, 1.0, n) for n in sizes]
        self.opt = [[c + rng.normal(0, hz / np.sqrt(n), n) for c, hz, n in zip(self.center, hetero, sizes, strict=True)]
                    for _ in range(self.N)]
        self.mean_opt = [np.mean([o[b] for o in self.opt], axis=0) for b in range(len(sizes))]
        self.w0 = [np.zeros(n) for n in sizes]

    def f(self, w) -> float:
        return float(np.mean([self.f_n(w, n) for n in range(self.N)]))

    def f_n(self, w, n: int) -> float:
        return sum(h / 2 * float(np.sum((wl - o) ** 2)) for h, wl, o in zip(self.h, w, self.opt[n], strict=True))

    def f_star(self) -> float:
        return self.f(self.mean_opt)

    def grad_norm2(self, w) -> float:
        return sum(h**2 * float(np.sum((wl - m) ** 2)) for h, wl, m in zip(self.h, w, self.mean_opt, strict=True))

    def variants(self, lr: float, K: int, T: int) -> dict[str, BoundConstants]:
        """The three versions of J2's constants compared (module docstring)."""
        shipped = self.constants(lr, K, T)
        d = np.array(self.sizes, float)
        return {
            "shipped": shipped,
            "curvature": dataclasses.replace(shipped, effective_sizes=self.h * d / self.h.max()),
            "blockwise": dataclasses.replace(shipped, block_smooth=self.h, cross_smooth=0.0),
        }

    def constants(self, lr: float, K: int, T: int) -> BoundConstants:
        """Exact: L = max h; Delta = f(w0) - f*; zeta_l^2 = mean_n |h_l (w*_n - mean w*)_l|^2 (constant in
        w for quadratics); G_l^2 = max_n |grad_l f_n(w0)|^2 + noise variance (gradients shrink from w0
        under the step-size condition, so w0 gives the supremum up to the drift)."""
        blocks = range(len(self.sizes))
        zeta2 = [np.mean([self.h[b] ** 2 * np.sum((o[b] - self.mean_opt[b]) ** 2) for o in self.opt]) for b in blocks]
        G2 = [max(self.h[b] ** 2 * np.sum((self.w0[b] - o[b]) ** 2) for o in self.opt)
              + self.noise**2 * self.sizes[b] / self.d for b in blocks]
        return BoundConstants(np.array(self.sizes, float), np.array(G2), np.array(zeta2), smooth=float(self.h.max()),
                              f_gap=self.f(self.w0) - self.f_star(), rounds=T, local_steps=K, perturbations=1, lr=lr)


def train(prob: Problem, A: np.ndarray, lr: float, K: int, T: int, seed: int) -> tuple[float, float]:
    """zorba's ZO steps and per-block aggregation; returns (mean_t |grad f(w_t)|^2, f(w_T) - f*)."""
    w = [x.copy() for x in prob.w0]
    norms = []
    for t in range(T):
        norms.append(prob.grad_norm2(w))
        finals = []
        for n in range(prob.N):
            blocks = [b for b in range(len(w)) if A[n, b]]
            local = [torch.tensor(x) for x in w]
            for k in range(K):
                xi = np.random.default_rng(derive_key(seed, t, n, k)).normal(0, prob.noise / np.sqrt(prob.d), prob.d)
                parts = np.split(xi, np.cumsum(prob.sizes)[:-1])

                def loss(n=n, local=local, parts=parts) -> float:
                    cur = [x.numpy() for x in local]
                    return prob.f_n(cur, n) + sum(float(p @ c) for p, c in zip(parts, cur, strict=True))

                spsa_step(loss, [[x] for x in local], blocks, derive_key(seed, t, n, k, 1), mu=1e-4, lr=lr)
            finals.append([x.numpy() for x in local])
        for b in range(len(w)):
            covering = [finals[n][b] for n in range(prob.N) if A[n, b]]
            if covering:
                w[b] = np.mean(covering, axis=0)
    return float(np.mean(norms)), prob.f(w) - prob.f_star()


INSTANCES = {  # curvature h_l and heterogeneity per block; block 0 is 6x larger than the others
    "embeddings": ([0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0], [0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0]),
    "spread": ([0.05, 0.1, 0.3, 1.0, 3.0, 10.0, 10.0], [0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0]),
}


def measure(prob: Problem, lr: float, K: int, T: int, seeds: int) -> list[dict]:
    """Per plan: J2 for every variant, mean |grad f|^2 and final excess loss averaged over seeds."""
    variants = prob.variants(lr, K, T)
    rows = []
    for name, plan in PLANS.items():
        A = as_matrix(plan)
        runs = [train(prob, A, lr, K, T, s) for s in range(seeds)]
        grad, excess = np.mean(runs, axis=0)
        row = {"plan": name, "mean_grad_norm2": float(grad), "final_excess_loss": float(excess),
               "sd_grad": float(np.std([r[0] for r in runs]) / np.sqrt(len(runs)))}
        row.update({f"J2_{v}": plan_bound(A.astype(float), c) for v, c in variants.items()})
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def summarise(rows: list[dict], trivial: float) -> dict:
    """Spearman(J2, mean |grad f|^2) and (J2, final excess) per variant, and how many plans have a J2
    below the trivial bound sum_l G_l^2 (otherwise J2 says nothing about that plan)."""
    out = {}
    for v in ("shipped", "curvature", "blockwise"):
        J = [r[f"J2_{v}"] for r in rows]
        out[v] = {"rho_grad": float(spearmanr(J, [r["mean_grad_norm2"] for r in rows]).statistic),
                  "rho_excess": float(spearmanr(J, [r["final_excess_loss"] for r in rows]).statistic),
                  "non_vacuous": int(sum(j < trivial for j in J))}
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 4e-4])
    ap.add_argument("--instance", nargs="+", choices=sorted(INSTANCES), default=["embeddings", "spread"])
    ap.add_argument("--size-scale", type=float, default=1.0, help="multiply every block size")
    ap.add_argument("--noise", type=float, default=1.0, help="minibatch gradient noise s")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    sizes = [max(1, round(n * args.size_scale)) for n in [1200] + [200] * 6]  # like MiniLM's embeddings
    table = []
    for inst in args.instance:
        curv, hetero = INSTANCES[inst]
        prob = Problem(sizes, curv, hetero, args.noise, seed=0)
        for lr in args.lrs:
            c = prob.constants(lr, args.local_steps, args.rounds)
            print(json.dumps({"instance": inst, "lr": lr, "L": c.smooth, "G2": c.G2.tolist(),
                              "zeta2": c.zeta2.tolist(), "f_gap": c.f_gap}), flush=True)
            rows = measure(prob, lr, args.local_steps, args.rounds, args.seeds)
            table.append((inst, lr, summarise(rows, float(c.G2.sum()))))
    print(json.dumps({"seconds": time.perf_counter() - start, "settings": vars(args)}))
    print(f"Spearman over {len(PLANS)} plans, {args.seeds} seeds, d = {sum(sizes)}, T = {args.rounds}, "
          f"K = {args.local_steps}: vs mean |grad f|^2 (what Theorem 2 bounds) / vs final excess loss "
          "[plans with J2 < sum G_l^2]")
    for inst, lr, res in table:
        cells = "  ".join(f"{v} {r['rho_grad']:+.3f} / {r['rho_excess']:+.3f} [{r['non_vacuous']}]"
                          for v, r in res.items())
        print(f"{inst:10s} lr {lr:.1e}:  {cells}")


if __name__ == "__main__":
    main()
