"""The real Flower coordinator against malformed or lying replies: each one marks its client failed
(or, at hello, is left out), and the run goes on. A fake Grid stands in for the SuperLink."""

import time

import pytest
import torch
from flwr.app import ConfigRecord, Message, Metadata, RecordDict

from zorba.flower import coordinator, wire
from zorba.flower.settings import FlowerOptions
from zorba.wire.protocol import Report, StepReport, step_seed

torch.set_num_threads(1)
NODES = {0: 101, 1: 102}


def reply(msg: Message, src: int, content: RecordDict) -> Message:
    meta = Metadata(run_id=0, message_id="", src_node_id=src, dst_node_id=0, reply_to_message_id="",
                    group_id="", created_at=time.time(), ttl=600.0, message_type=msg.metadata.message_type)
    return Message(content=content, metadata=meta)


class FakeGrid:
    """Node 101 answers with `answer(msg)`; every other node stays silent."""

    def __init__(self, answer):
        self.answer = answer

    def get_node_ids(self):
        return sorted(NODES.values())

    def send_and_receive(self, msgs, timeout):
        return [reply(m, 101, self.answer(m)) for m in msgs if m.metadata.dst_node_id == 101]


@pytest.fixture
def run(tiny_models, tmp_path, data_dir):
    from zorba.federation.config import make_config

    (tmp_path / "sst2").mkdir()
    for name, n in (("train", 40), ("dev", 8)):
        lines = (data_dir / "sst2" / f"{name}.tsv").read_text().splitlines()[: n + 1]
        (tmp_path / "sst2" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    cfg = make_config(model=str(tiny_models["bert"]), clients=2, rounds=2, local_steps=1, batch_size=4,
                      max_len=16, data_dir=str(tmp_path), measure_memory=False, planner="all")
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0  # what a ServerApp process has before it builds messages
    flower_run = coordinator.build_run(cfg, FlowerOptions(round_timeout=0.5))
    flower_run.node_of.update(NODES)
    return flower_run


def report_for(run, client: int) -> RecordDict:
    """A report the server would accept from `client` this round (right seeds, finite scalars)."""
    rseed = next(iter(run.server._plans.values())).round_seed
    steps = tuple(StepReport(step_seed(rseed, client, k), (0.25,)) for k in range(run.cfg.local_steps))
    return wire.report_to_records(Report(run.server.round, client, steps, 0.5), 10)


HOSTILE = {
    "another client's id": lambda run, msg: report_for(run, 1),
    "gap without have": lambda run, msg: RecordDict({wire.GAP: ConfigRecord({})}),
    "gap with a non-integer": lambda run, msg: RecordDict({wire.GAP: ConfigRecord({"have": "three"})}),
    "gap with a negative have": lambda run, msg: RecordDict({wire.GAP: ConfigRecord({"have": -4})}),
    "no report record": lambda run, msg: RecordDict({}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_a_bad_train_reply_fails_its_client_and_the_run_goes_on(case, run):
    grid = FakeGrid(lambda msg: HOSTILE[case](run, msg))
    for t in range(2):
        record = coordinator.run_round(grid, run)
        assert record["round"] == t and record["reported"] == []
        assert set(record["failed"]) == {"0", "1"}, record["failed"]
    assert run.server.round == 2 and 1 not in run.server.reports


@pytest.mark.parametrize("setup", [
    {"partition-id": 0, "base-sha256": "x"},  # no examples
    None,  # no zorba.setup record
    {"partition-id": "zero", "base-sha256": "x", "examples": 10},
    {"partition-id": 7, "base-sha256": "x", "examples": 10},
])
def test_a_malformed_hello_leaves_that_node_out(setup, run):
    run.node_of.clear()
    good = {102: 0, 103: 1}

    class Grid(FakeGrid):
        def get_node_ids(self):
            return [101, 102, 103]

        def send_and_receive(self, msgs, timeout):
            out = []
            for m in msgs:
                node = m.metadata.dst_node_id
                if node == 101:
                    out.append(reply(m, 101, RecordDict({wire.SETUP: ConfigRecord(setup)} if setup else {})))
                else:
                    answer = {"partition-id": good[node], "base-sha256": run.base_digest, "examples": 20}
                    out.append(reply(m, node, RecordDict({wire.SETUP: ConfigRecord(answer)})))
            return out

    coordinator.hello(Grid(None), run, [101, 102, 103])
    assert run.node_of == {0: 102, 1: 103}


def test_a_sync_reply_without_a_digest_is_out_of_sync_not_a_crash(run):
    grid = FakeGrid(lambda msg: RecordDict({wire.SYNC: ConfigRecord({"cursor": 0})}))
    coordinator.final_sync(grid, run)
    assert run.final_sync["clients_in_sync"] is False
