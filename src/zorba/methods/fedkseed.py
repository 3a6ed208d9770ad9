"""FedKSeed-style: ZO on all blocks with every step's seed drawn from a pool of K seeds shared by
server and clients. A client accumulates its scalars per pool seed and uploads K float32 values,
whatever its number of local steps; the server averages them and every client replays the K averaged
scalars (K float32 per round it missed). Optional probability-differentiated seed sampling (PDSS):
seeds whose scalars have been large so far are drawn more often."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from zorba.core.replica import Replica
from zorba.core.zo import spsa_step
from zorba.errors import UserError
from zorba.methods.base import BaselineOptions, Method, RoundStats, Setup, Upload
from zorba.methods.wire import encode_catch_up, encode_scalars
from zorba.methods.zo_common import all_blocks, apply_scalars, mean_uploaded_scalars, revert_local_steps
from zorba.wire.keys import derive_key
from zorba.wire.protocol import StepReport

_POOL_TAG, _DRAW_TAG = 0x4B5EED, 0xD4A3


class FedKSeedOptions(BaselineOptions):
    k_seeds: int = Field(64, ge=1, le=1 << 20)
    pdss: bool = False
    pdss_alpha: float = Field(1.0, ge=0.0)  # sharpness of PDSS: 0 = uniform


def seed_pool(run_seed: int, k: int) -> list[int]:
    return [derive_key(run_seed, _POOL_TAG, i) for i in range(k)]


def pdss_probabilities(importance: np.ndarray, alpha: float) -> np.ndarray:
    """p_i proportional to exp(alpha * importance_i / max importance); seeds never used yet get the
    mean importance, so they keep being explored."""
    imp = importance.copy()
    seen = imp > 0
    if not seen.any():
        return np.full(len(imp), 1.0 / len(imp))
    imp[~seen] = imp[seen].mean()
    logits = alpha * imp / imp.max()
    p = np.exp(logits - logits.max())
    return p / p.sum()


class FedKSeed(Method):
    family = "fedkseed"
    Options = FedKSeedOptions

    def __init__(self, setup: Setup, options: FedKSeedOptions) -> None:
        super().__init__(setup, options)
        if self.cfg.q != 1:
            raise UserError("fedkseed: q must be 1 (one scalar per pool seed)")
        self.replica = Replica(setup.lm)
        self.pool = seed_pool(self.cfg.seed, options.k_seeds)
        # Server and clients both derive this from the aggregated scalars they all replay.
        self.amplitude_sum = np.zeros(options.k_seeds)
        self.amplitude_count = np.zeros(options.k_seeds)
        self.history: list[tuple[int, tuple[float, ...]]] = []
        self.seen: dict[int, int] = {}  # client -> first history entry it has not replayed

    def probabilities(self) -> np.ndarray:
        k = self.options.k_seeds
        if not self.options.pdss:
            return np.full(k, 1.0 / k)
        importance = self.amplitude_sum / np.maximum(self.amplitude_count, 1)
        return pdss_probabilities(importance, self.options.pdss_alpha)

    def client_update(self, cid: int, round_idx: int) -> Upload:
        cfg = self.cfg
        rng = np.random.default_rng(derive_key(cfg.seed, _DRAW_TAG, round_idx, cid))
        draws = rng.choice(self.options.k_seeds, size=cfg.local_steps, p=self.probabilities())
        acc = np.zeros(self.options.k_seeds, dtype=np.float64)
        losses, steps = [], []
        for k, i in enumerate(draws):
            seqs, labels = self.setup.batch(cid, round_idx, k)
            step, loss = spsa_step(
                lambda seqs=seqs, labels=labels: self.setup.scorer.loss(seqs, labels),
                self.replica.tensors, all_blocks(self.replica), self.pool[i], cfg.mu, cfg.lr, 1, cfg.dist,
            )
            acc[i] += step.scalars[0]
            losses.append(loss)
            steps.append(step)
        revert_local_steps(self.replica, round_idx, cfg.lr, 1, cfg.dist, steps)
        data = encode_scalars(round_idx, cid, acc.astype(np.float32).tolist())
        return Upload(data, float(np.mean(losses)), forward=2 * cfg.local_steps)

    def run_round(self, round_idx: int, clients: list[int]) -> RoundStats:
        downs = [len(self._catch_up(cid, round_idx)) for cid in clients]
        mean, ups, losses, busy = mean_uploaded_scalars(self, clients, round_idx, self.options.k_seeds)
        self._apply(round_idx, mean)
        n = len(clients)
        return RoundStats(float(np.mean(losses)), ups, downs, forward=2 * self.cfg.local_steps * n, backward=0,
                          client_seconds=busy)

    def _catch_up(self, cid: int, round_idx: int) -> bytes:
        """The aggregated scalars of every round since the client's last one, its own included."""
        return encode_catch_up(round_idx, self.history[self.seen.get(cid, 0) : round_idx])

    def _apply(self, round_idx: int, mean: np.ndarray) -> None:
        self.history.append((round_idx, tuple(float(g) for g in mean)))
        used = np.flatnonzero(mean)
        self.amplitude_sum[used] += np.abs(mean[used])
        self.amplitude_count[used] += 1
        # Seeds nobody drew this round have a zero scalar: skipping them changes nothing.
        steps = [StepReport(self.pool[i], (float(mean[i]),)) for i in used]
        apply_scalars(self.replica, round_idx, self.cfg.lr, 1, self.cfg.dist, steps)
