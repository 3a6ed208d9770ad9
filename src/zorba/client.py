"""Client logic: catch up by replay, run K local ZO steps on the planned blocks, report scalars."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from zorba.data import sample_batch
from zorba.deferred import DeferredTables
from zorba.packed import PackedSmallTensors
from zorba.prefix import SharedPrefix
from zorba.protocol import Report, RoundPlan, step_seed
from zorba.replica import Replica
from zorba.scoring import Scorer
from zorba.zo import spsa_step


@dataclass
class TokenizedData:
    ids: list[list[int]]
    labels: list[int]


@dataclass
class ClientState:
    """What a client owns: its id and its data. The model lives on its device (a Replica)."""

    cid: int
    indices: np.ndarray


def run_round(plan: RoundPlan, state: ClientState, replica: Replica, scorer: Scorer, data: TokenizedData) -> Report:
    replica.sync(plan.catch_up, first_index=plan.catch_up[0].round if plan.catch_up else None)
    h = plan.hyper
    snap = replica.snapshot(plan.blocks)
    steps, losses = [], []
    active = [t for b in plan.blocks for t in replica.tensors[b]]
    model = replica.lm.model
    with (DeferredTables(model, active, h.dist) as deferred, PackedSmallTensors(active) as packed,
          SharedPrefix(model, active) as prefix):
        for k in range(h.local_steps):
            batch = sample_batch(state.indices, h.batch_size, plan.round_seed, state.cid, k)
            ids = [data.ids[i] for i in batch]
            labels = [data.labels[i] for i in batch]
            sseed = step_seed(plan.round_seed, state.cid, k)
            step, loss = spsa_step(
                prefix.shared(lambda ids=ids, labels=labels: scorer.loss(ids, labels)),
                replica.tensors, plan.blocks, sseed, h.mu, h.lr, h.q, h.dist, deferred=deferred, packed=packed,
            )
            steps.append(step)
            losses.append(loss)
        deferred.discard()  # the local weights end here: restore brings back the round-start ones
    replica.restore(snap)
    return Report(plan.round, state.cid, tuple(steps), float(np.mean(losses)), len(state.indices))
