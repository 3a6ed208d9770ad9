"""FedZO-style: K local ZO-SGD steps on all blocks; each client uploads its dense weight delta
(safetensors), the server averages the deltas and sends the new global weights back."""

from __future__ import annotations

import torch

from zorba.core.replica import Replica
from zorba.methods.base import BaselineOptions, Method, RoundStats, Setup, Upload
from zorba.methods.wire import tensors_from_bytes, tensors_to_bytes
from zorba.methods.zo_common import all_blocks, local_zo_steps
from zorba.wire.keys import derive_key

_TAG = 0xFED20


class FedZO(Method):
    family = "fedzo"
    Options = BaselineOptions

    def __init__(self, setup: Setup, options) -> None:
        super().__init__(setup, options)
        self.replica = Replica(setup.lm)
        self.names = dict(setup.lm.model.named_parameters())

    def _named(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.names.items()}

    def client_update(self, cid: int, round_idx: int) -> Upload:
        # The client needs the global weights to form its delta: the snapshot is a real client cost.
        snap = self.replica.snapshot(all_blocks(self.replica))
        seeds = [derive_key(self.cfg.seed, _TAG, round_idx, cid, k) for k in range(self.cfg.local_steps)]
        _, loss = local_zo_steps(self.setup, self.replica, cid, round_idx, seeds)
        before = {id(t): s for b, saved in snap.items() for t, s in zip(self.replica.tensors[b], saved, strict=True)}
        delta = {n: p.detach() - before[id(p)] for n, p in self._named().items()}
        data = tensors_to_bytes(delta)
        self.replica.restore(snap)
        return Upload(data, loss, forward=2 * self.cfg.q * self.cfg.local_steps)

    @torch.no_grad()
    def run_round(self, round_idx: int, clients: list[int]) -> RoundStats:
        down = len(tensors_to_bytes(self._named()))  # every client receives the full global weights
        total: dict[str, torch.Tensor] = {}
        ups, losses, busy = [], [], 0.0
        weights = self.client_weights(clients)
        for i, cid in enumerate(clients):
            up = self.train_client(cid, round_idx)
            for name, value in tensors_from_bytes(up.data).items():
                value = value if weights is None else float(weights[i]) * value
                total[name] = total[name] + value if name in total else value
            ups.append(len(up.data))
            losses.append(up.loss)
            busy += up.seconds
        for name, p in self._named().items():
            p.add_(total[name] / len(clients) if weights is None else total[name])
        n = len(clients)
        return RoundStats(sum(losses) / n, ups, [down] * n, forward=2 * self.cfg.q * self.cfg.local_steps * n, backward=0,
                          client_seconds=busy)
