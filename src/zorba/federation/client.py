"""Client logic: catch up by replay, run K local ZO steps on the planned blocks, report scalars."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from zorba.core.data import sample_batch
from zorba.core.deferred import DeferredTables
from zorba.core.packed import PackedSmallTensors
from zorba.core.replica import Replica
from zorba.core.scoring import Scorer
from zorba.core.zo import spsa_step
from zorba.memory.prefix import SharedPrefix
from zorba.wire.protocol import Hyper, Report, RoundPlan, StepReport, step_seed


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

    def batches() -> Iterator[tuple[list[list[int]], list[int], int]]:
        for k in range(h.local_steps):
            batch = sample_batch(state.indices, h.batch_size, plan.round_seed, state.cid, k)
            yield [data.ids[i] for i in batch], [data.labels[i] for i in batch], step_seed(plan.round_seed, state.cid, k)

    steps, losses = local_steps(replica, plan.blocks, scorer, batches(), h)
    replica.restore(snap)
    return Report(plan.round, state.cid, tuple(steps), float(np.mean(losses)))


def local_steps(
    replica: Replica, blocks: Sequence[int], scorer: Scorer,
    batches: Iterable[tuple[list[list[int]], list[int], int]], h: Hyper,
) -> tuple[list[StepReport], list[float]]:
    """A round's local ZO steps, one per (token ids, labels, step seed), on the blocks `replica.snapshot`
    promoted: deferred embedding tables, packed small tensors and a shared frozen prefix, as a client
    runs them (memprobe measures the same loop). The local weights end here: the caller restores."""
    steps, losses = [], []
    active = [t for b in blocks for t in replica.tensors[b]]
    model = replica.lm.model
    with (DeferredTables(model, active, h.dist) as deferred, PackedSmallTensors(active) as packed,
          SharedPrefix(model, active) as prefix):
        for ids, labels, sseed in batches:
            step, loss = spsa_step(
                prefix.shared(lambda ids=ids, labels=labels: scorer.loss(ids, labels)),
                replica.tensors, blocks, sseed, h.mu, h.lr, h.q, h.dist, deferred=deferred, packed=packed,
            )
            steps.append(step)
            losses.append(loss)
        deferred.discard()  # the queued table updates die with the local weights
    return steps, losses
