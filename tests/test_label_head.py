"""The label head: zero at start (the zero-shot scorer), its own last block, the same loss from cached
features as from a forward, trained alone by the `head` planner with a bit-exact replay on either engine, and streamed into a
client's replica like the checkpoint's weights, and exported with the model for the next run."""

import json

import pytest
import torch
from conftest import DATA
from test_streamload import _no_full_load, assert_same_replica

from zorba.core.label_head import attach_label_head, label_head_of
from zorba.core.models import load_model
from zorba.core.scoring import Scorer
from zorba.core.tasks import get_task, read_examples
from zorba.federation.config import make_config
from zorba.memory.precision import make_client_replica
from zorba.memory.streamload import load_client_replica

TASK = get_task("sst2")


def _scorer(folder, head: bool) -> Scorer:
    lm = load_model(str(folder))
    if head:
        attach_label_head(lm, TASK.num_labels)
    return Scorer(lm, TASK, max_len=24)


def _ids(scorer: Scorer, n: int = 12) -> tuple[list[list[int]], list[int]]:
    examples = read_examples(DATA / "sst2" / "dev.tsv", TASK)[:n]
    return scorer.encode(examples), [e.label for e in examples]


@pytest.mark.parametrize("family", ["bert", "opt", "llama"])
def test_a_zero_head_is_the_zero_shot_scorer_and_the_last_block(tiny_models, family):
    plain, headed = _scorer(tiny_models[family], False), _scorer(tiny_models[family], True)
    ids, _ = _ids(plain)
    assert torch.allclose(headed.logits(ids), plain.logits(ids), atol=1e-5)
    last = headed.lm.blocks[-1]
    assert last.name == "label_head" and last.numel == TASK.num_labels * label_head_of(headed.lm.model).offset.shape[1]
    assert [b.name for b in headed.lm.blocks[:-1]] == [b.name for b in plain.lm.blocks]


@pytest.mark.parametrize("family", ["bert", "opt"])
def test_cached_features_give_the_forward_loss(tiny_models, family):
    scorer = _scorer(tiny_models[family], True)
    with torch.no_grad():
        label_head_of(scorer.lm.model).offset.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
    ids, labels = _ids(scorer)
    feats = scorer.features(ids)
    rows = [3, 0, 7, 7, 11]
    direct = scorer.loss([ids[r] for r in rows], [labels[r] for r in rows])
    assert scorer.cached_loss(feats, rows, [labels[r] for r in rows]) == pytest.approx(direct, rel=1e-5)
    assert direct != pytest.approx(_scorer(tiny_models[family], False).loss([ids[r] for r in rows],
                                                                            [labels[r] for r in rows]), rel=1e-3)


def test_the_head_planner_brings_its_head_and_no_other_planner_does(tiny_models):
    from zorba.federation.runner import has_label_head

    model = str(tiny_models["bert"])
    assert has_label_head(make_config(model=model, planner="head"))
    assert not has_label_head(make_config(model=model, planner="fill"))


def test_a_head_run_moves_only_the_head_and_replays_bit_exactly(tiny_models, tmp_path, zorba):
    out = tmp_path / "run"
    res = zorba("run", "--model", str(tiny_models["bert"]), "--data-dir", str(DATA), "--clients", "3",
                "--rounds", "2", "--local-steps", "2", "--head-steps", "6", "--batch-size", "4", "--max-len", "24",
                "--train-size", "60", "--eval-every", "2", "--planner", "head",
                "--head-pool", "10", "--lr", "1e-3", "--precision", "fp32", "--no-measure-memory", "--out", str(out))
    assert res.returncode == 0, res.stderr
    entries = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    head_block = len(load_model(str(tiny_models["bert"])).blocks)  # one past the model's own blocks
    assert all(u["blocks"] == [head_block] and len(u["steps"]) == 6 for e in entries for u in e["updates"])
    from safetensors.torch import load_file

    saved, base = load_file(str(out / "model" / "model.safetensors")), load_model(str(tiny_models["bert"])).model
    assert saved["zorba_label_head.offset"].abs().sum() > 0
    assert all(torch.equal(saved[n], p) for n, p in base.named_parameters())
    check = zorba("verify", str(out))
    assert check.returncode == 0 and "bit-identical" in check.stdout, check.stdout + check.stderr
    # the exported model carries its head into the next run, on either load path
    from zorba.federation.runner import load_run_model

    again = load_run_model(make_config(model=str(out / "model"), data_dir=str(DATA)))
    assert torch.equal(label_head_of(again.model).offset, saved["zorba_label_head.offset"])
    assert again.blocks[-1].name == "label_head"
    assert_same_replica(make_client_replica(again, "bf16"), load_client_replica(str(out / "model"), "bf16", label_head=2))


def test_flower_trains_the_head_bit_for_bit_as_the_runner(tiny_models, tmp_path):
    from zorba.federation.runner import Runner, check_inputs
    from zorba.flower.settings import FlowerOptions
    from zorba.flower.simulation import run_flower_simulation

    cfg = make_config(model=str(tiny_models["opt"]), clients=2, rounds=2, local_steps=4, train_size=40,
                      planner="head", head_pool=8, data_dir=str(DATA), batch_size=4, max_len=24,
                      lr=1e-3, measure_memory=False, eval_every=100)
    result = run_flower_simulation(cfg, FlowerOptions(round_timeout=120), tmp_path / "fl", actors=1)
    state = Runner(cfg, check_inputs(cfg)).run()
    assert result["final_model_sha256"] == state.server.replica.digest() != result["base_model_sha256"]


@pytest.mark.parametrize("family", ["bert", "opt"])
def test_a_streamed_replica_carries_the_zero_head(tiny_models, family, monkeypatch):
    ref = make_client_replica(attach_label_head(load_model(str(tiny_models[family])), 2), "bf16")
    _no_full_load(monkeypatch)
    assert_same_replica(ref, load_client_replica(str(tiny_models[family]), "bf16", label_head=2))


def test_a_calibration_without_the_head_plans_it_at_its_bytes_per_weight(tiny_models):
    from zorba.federation.runner import with_label_head
    from zorba.memory.memory_model import MemoryModel

    lm = attach_label_head(load_model(str(tiny_models["bert"])), 2)
    mem = MemoryModel(100.0, [10.0] * (len(lm.blocks) - 1), 5.0)
    extended = with_label_head(mem, lm, {"bytes_per_active_param": 3.0})
    assert extended.n_blocks == len(lm.blocks)
    assert extended.delta[-1] == 3.0 * lm.blocks[-1].numel and list(extended.delta[:-1]) == list(mem.delta)
    assert with_label_head(extended, lm, {}) is extended  # a calibration that has it stays as it is


def test_the_memory_probe_runs_a_head_client_as_the_client_does(tiny_models, monkeypatch):
    """A head-only client holds a pool's features and steps on them (client.head_steps): its
    measured peak must come from that loop, on a pool of `head_pool` examples, not from two
    forwards per step."""
    import zorba.federation.client as client
    from zorba.federation.memprobe import MemoryProbe, _probe

    pools = []
    real = client.head_steps
    monkeypatch.setattr(client, "head_steps", lambda *a: pools.append((len(a[4].ids), a[5])) or real(*a))
    monkeypatch.setattr(client, "local_steps", lambda *a: pytest.fail("a head client's probe ran the encoder loop"))
    lm = attach_label_head(load_model(str(tiny_models["bert"])), 2)
    head = len(lm.blocks) - 1
    out = _probe(MemoryProbe(str(tiny_models["bert"]), "sst2", (head,), 4, 16, local_steps=3, data_dir=str(DATA),
                             precision="fp32", load="full", label_head=True, head_pool=40))
    assert pools == [(40, 40)]
    assert out["active_params"] == lm.blocks[head].numel and out["peak_rss_bytes"] > 0


def test_the_memory_probe_runs_the_first_order_head_in_the_clients_format(tiny_models, monkeypatch):
    """Mode `fo-head` measures `fedavg-head`'s round in zorba's client format: the same pool, SGD on
    the head's exact gradient (no SPSA, no encoder loop)."""
    import zorba.federation.client as client
    from zorba.core.scoring import Scorer
    from zorba.federation.memprobe import MemoryProbe, _probe

    monkeypatch.setattr(client, "head_steps", lambda *a: pytest.fail("the fo-head probe ran SPSA"))
    monkeypatch.setattr(client, "local_steps", lambda *a: pytest.fail("the fo-head probe ran the encoder loop"))
    grads = []
    real = Scorer.head_loss
    monkeypatch.setattr(Scorer, "head_loss", lambda self, f, rows, y: grads.append(len(rows)) or real(self, f, rows, y))
    lm = attach_label_head(load_model(str(tiny_models["bert"])), 2)
    head = len(lm.blocks) - 1
    out = _probe(MemoryProbe(str(tiny_models["bert"]), "sst2", (head,), 4, 16, local_steps=3, data_dir=str(DATA),
                             precision="fp32", load="full", label_head=True, head_pool=40, mode="fo-head"))
    assert grads == [4, 4, 4] and out["active_params"] == lm.blocks[head].numel and out["peak_rss_bytes"] > 0
