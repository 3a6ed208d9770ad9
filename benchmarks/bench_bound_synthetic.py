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
rank correlations with J2 (`planner.plan_bound`, exact constants) last.

    python benchmarks/bench_bound_synthetic.py [--seeds 20] [--rounds 30] [--lr 4e-4]
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--local-steps", type=int, default=5)
    ap.add_argument("--lr", type=float, default=4e-4)
    ap.add_argument("--noise", type=float, default=1.0, help="minibatch gradient noise s")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    sizes = [1200] + [200] * 6  # one large block, like MiniLM's embeddings against its layers
    curv = [0.5, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0]
    hetero = [0.5, 0.5, 1.0, 1.0, 2.0, 2.0, 3.0]
    prob = Problem(sizes, curv, hetero, args.noise, seed=0)
    consts = prob.constants(args.lr, args.local_steps, args.rounds)
    # Curvature-weighted sizes r_l = tr(H_ll) / L (docs/theory.md): h_l d_l / max h here, exactly
    curved = dataclasses.replace(consts, effective_sizes=np.array(curv) * np.array(sizes) / max(curv))
    rows = []
    for name, plan in PLANS.items():
        A = as_matrix(plan)
        runs = [train(prob, A, args.lr, args.local_steps, args.rounds, s) for s in range(args.seeds)]
        grad, excess = np.mean(runs, axis=0)
        rows.append({"plan": name, "J2": plan_bound(A.astype(float), consts),
                     "J2_curvature": plan_bound(A.astype(float), curved), "mean_grad_norm2": float(grad),
                     "final_excess_loss": float(excess),
                     "sd_excess": float(np.std([r[1] for r in runs]) / np.sqrt(len(runs)))})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"seconds": time.perf_counter() - start, "settings": vars(args), "L": consts.smooth,
                      "G2": consts.G2.tolist(), "zeta2": consts.zeta2.tolist(), "f_gap": consts.f_gap}))
    for key, label in (("J2", "raw sizes d_l"), ("J2_curvature", "curvature sizes tr(H_ll)/L")):
        J = [r[key] for r in rows]
        rho_loss = spearmanr(J, [r["final_excess_loss"] for r in rows]).statistic
        rho_grad = spearmanr(J, [r["mean_grad_norm2"] for r in rows]).statistic
        print(f"{label}: Spearman(J2, final excess loss) {rho_loss:+.3f}, "
              f"Spearman(J2, mean |grad f|^2, what Theorem 2 bounds) {rho_grad:+.3f} over {len(rows)} plans")


if __name__ == "__main__":
    main()
