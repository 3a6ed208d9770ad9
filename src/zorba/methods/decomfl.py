"""DeComFL-style: ZO on all blocks where step k of round t uses the same seed at every sampled client
(derived from the round id, so seeds never travel). Each client uploads K x q float32 scalars; the
server averages them per step and perturbation; a client that comes back replays the averaged scalars
of every round it missed (K x q float32 per round) to reach the global weights."""

from __future__ import annotations

import numpy as np

from zorba.core.replica import Replica
from zorba.methods.base import BaselineOptions, Method, RoundStats, Setup, Upload
from zorba.methods.wire import encode_catch_up, encode_scalars
from zorba.methods.zo_common import apply_scalars, local_zo_steps, mean_uploaded_scalars, revert_local_steps
from zorba.wire.keys import derive_key
from zorba.wire.protocol import StepReport, round_seed

_TAG = 0xDEC0F1


class DeComFL(Method):
    family = "decomfl"
    Options = BaselineOptions

    def __init__(self, setup: Setup, options) -> None:
        super().__init__(setup, options)
        self.replica = Replica(setup.lm)
        self.history: list[tuple[int, tuple[float, ...]]] = []
        self.seen: dict[int, int] = {}  # client -> first history entry it has not replayed

    def round_seeds(self, round_idx: int) -> list[int]:
        rseed = round_seed(self.cfg.seed, round_idx)
        return [derive_key(rseed, _TAG, k) for k in range(self.cfg.local_steps)]

    def client_update(self, cid: int, round_idx: int) -> Upload:
        steps, loss = local_zo_steps(self.setup, self.replica, cid, round_idx, self.round_seeds(round_idx))
        revert_local_steps(self.replica, round_idx, self.cfg.lr, self.cfg.q, self.cfg.dist, steps)
        scalars = [g for s in steps for g in s.scalars]
        return Upload(encode_scalars(round_idx, cid, scalars), loss, forward=2 * self.cfg.q * len(steps))

    def run_round(self, round_idx: int, clients: list[int]) -> RoundStats:
        downs = [len(encode_catch_up(round_idx, self.history[self.seen.get(c, 0) : round_idx])) for c in clients]
        mean, ups, losses, busy = mean_uploaded_scalars(self, clients, round_idx, self.cfg.local_steps * self.cfg.q)
        self.history.append((round_idx, tuple(float(g) for g in mean)))
        q = self.cfg.q
        steps = [StepReport(s, tuple(float(g) for g in mean[k * q : (k + 1) * q])) for k, s in enumerate(self.round_seeds(round_idx))]
        apply_scalars(self.replica, round_idx, self.cfg.lr, q, self.cfg.dist, steps)
        n = len(clients)
        return RoundStats(float(np.mean(losses)), ups, downs, forward=2 * q * self.cfg.local_steps * n, backward=0,
                          client_seconds=busy)
