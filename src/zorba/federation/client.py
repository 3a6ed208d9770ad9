"""Client logic: catch up by replay, run K local ZO steps on the planned blocks, report scalars."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from zorba.core.data import sample_batch
from zorba.core.deferred import DeferredTables
from zorba.core.packed import PackedSmallTensors
from zorba.core.replica import Replica
from zorba.core.scoring import Features, Scorer
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


_POOL_TAG = 0x9001  # the head pool's draw key has one more field than a step's batch key: never equal


def run_round(plan: RoundPlan, state: ClientState, replica: Replica, scorer: Scorer, data: TokenizedData,
              head_pool: int = 160) -> Report:
    replica.sync(plan.catch_up, first_index=plan.catch_up[0].round if plan.catch_up else None)
    snap = replica.snapshot(plan.blocks)
    if trains_label_head_only(replica, plan.blocks):
        steps, losses = head_steps(plan, state, replica, scorer, data, head_pool)
    else:
        steps, losses = local_steps(replica, plan.blocks, scorer, step_batches(plan, state, data), plan.hyper)
    replica.restore(snap)
    return Report(plan.round, state.cid, tuple(steps), float(np.mean(losses)))


def step_batches(plan: RoundPlan, state: ClientState, data: TokenizedData) -> Iterator[tuple[list[list[int]], list[int], int]]:
    """(token ids, labels, step seed) of each local step: a pure function of round seed, client and step."""
    for k in range(plan.hyper.local_steps):
        batch = sample_batch(state.indices, plan.hyper.batch_size, plan.round_seed, state.cid, k)
        yield [data.ids[i] for i in batch], [data.labels[i] for i in batch], step_seed(plan.round_seed, state.cid, k)


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


def trains_label_head_only(replica: Replica, blocks: Sequence[int]) -> bool:
    return len(blocks) == 1 and replica.lm.blocks[blocks[0]].name == "label_head"


def head_pool(indices: np.ndarray, pool_size: int, round_seed: int, cid: int) -> np.ndarray:
    """The examples whose features a head client computes for its round: a pure function of the round."""
    return sample_batch(indices, min(pool_size, len(indices)), round_seed, cid, 0, _POOL_TAG)


def pool_features(scorer: Scorer, data: TokenizedData, pool: np.ndarray, batch_size: int) -> tuple[Features, np.ndarray]:
    """The pool's features and labels, in forwards of batch_size examples: the activation memory of
    any other client's step (memprobe)."""
    ids = [data.ids[i] for i in pool]
    feats = Features.concat([scorer.features(ids[s : s + batch_size]) for s in range(0, len(ids), batch_size)])
    return feats, np.asarray([data.labels[i] for i in pool])


def head_batch(pool_len: int, batch_size: int, round_seed: int, cid: int, step: int) -> np.ndarray:
    """Rows of the pool that local step `step` trains on."""
    return sample_batch(np.arange(pool_len), batch_size, round_seed, cid, step)


def gradient_head_steps(scorer: Scorer, feats: Features, labels: np.ndarray, opt, steps: int, batch_size: int,
                        round_seed: int, cid: int) -> list[float]:
    """First-order steps on the label head (`opt` holds its offsets): the exact gradient of the loss
    SPSA estimates in `head_steps`, on the same batches of the pool. The fedavg-head baseline's round
    and its memory probe (memprobe mode fo-head)."""
    losses = []
    for k in range(steps):
        rows = head_batch(len(labels), batch_size, round_seed, cid, k)
        opt.zero_grad(set_to_none=True)
        loss = scorer.head_loss(feats, rows, labels[rows])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    opt.zero_grad(set_to_none=True)
    return losses


def head_steps(plan: RoundPlan, state: ClientState, replica: Replica, scorer: Scorer, data: TokenizedData,
               pool_size: int) -> tuple[list[StepReport], list[float]]:
    """Local steps on the label head alone: the body is frozen for the round, so the features of a
    pool of the client's examples are computed once and every step's two losses read them (a few
    microseconds instead of two forwards). The batches are drawn from the pool with the step keys."""
    h = plan.hyper
    pool = head_pool(state.indices, pool_size, plan.round_seed, state.cid)
    feats, labels = pool_features(scorer, data, pool, h.batch_size)
    steps, losses = [], []
    for k in range(h.local_steps):
        rows = head_batch(len(pool), h.batch_size, plan.round_seed, state.cid, k)
        step, loss = spsa_step(
            lambda rows=rows: scorer.cached_loss(feats, rows, labels[rows]),
            replica.tensors, plan.blocks, step_seed(plan.round_seed, state.cid, k), h.mu, h.lr, h.q, h.dist,
        )
        steps.append(step)
        losses.append(loss)
    return steps, losses

