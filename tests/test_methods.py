"""Baseline methods: one round end to end on tiny models, byte counts from first principles, the
first-order loss matches the scorer's and training lowers it, scalar replay reproduces training, and
the engine evaluates the held-out validation split and leaves excluded clients out."""

import struct

import numpy as np
import pytest
import torch

from zorba.core.models import load_model
from zorba.experiments.bench import subsample_dev
from zorba.federation.config import make_config
from zorba.federation.runner import read_inputs
from zorba.methods import REGISTRY, make_method, make_setup
from zorba.methods.engine import run_method
from zorba.methods.fedkseed import pdss_probabilities
from zorba.methods.grad_loss import loss_with_grad
from zorba.methods.wire import (
    CATCH_UP_ENTRY_HEADER,
    CATCH_UP_HEADER,
    SCALAR_HEADER,
    decode_scalars,
    encode_scalars,
)


def tiny_cfg(model_dir, data_dir, **over):
    values = dict(model=str(model_dir), clients=2, rounds=1, local_steps=2, train_size=40, data_dir=str(data_dir),
                  lr=1e-3, mu=1e-3, batch_size=4, max_len=24, eval_every=1, measure_memory=False)
    return make_config(**{**values, **over})


@pytest.fixture(scope="module")
def opt_env(tiny_models, data_dir):
    cfg = tiny_cfg(tiny_models["opt"], data_dir)
    return cfg, subsample_dev(read_inputs(cfg), 16), load_model(cfg.model)


def build(name, env, options=None, **over):
    cfg, inputs, lm = env
    return make_method(name, make_setup(cfg.model_copy(update=over), inputs, lm), options)


def safetensors_size(numel: int, data: bytes) -> int:
    """8-byte header length + JSON header + 4 bytes per float32 element: the format's definition."""
    (header_len,) = struct.unpack("<Q", data[:8])
    return 8 + header_len + 4 * numel


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_method_runs_a_round(name, opt_env):
    method = build(name, opt_env)
    result = run_method(method)
    cfg = method.cfg
    assert 0.0 <= result["accuracy"]["final"] <= 1.0 and len(result["history"]) == 1
    assert result["comm"]["uplink_bytes_total"] > 0 and result["comm"]["downlink_bytes_total"] > 0
    assert result["client_seconds"] > 0 and len(result["dev_predictions"]) == 16
    steps = cfg.local_steps * cfg.clients
    if name == "fedavg-head":  # the pools' forwards; its steps read cached features
        pools = [min(cfg.head_pool, len(p)) for p in method.setup.parts]
        assert (result["passes"]["forward"], result["passes"]["backward"]) == (sum(-(-n // cfg.batch_size) for n in pools), 0)
    elif method.first_order:
        assert (result["passes"]["forward"], result["passes"]["backward"]) == (steps, steps)
    else:
        assert (result["passes"]["forward"], result["passes"]["backward"]) == (2 * cfg.q * steps, 0)


@pytest.mark.parametrize("name", ["decomfl", "zorba-all"])
def test_engine_scores_validation_and_never_draws_an_excluded_client(name, tiny_models, data_dir):
    """The validation split is carved from train before the partition (runner.read_inputs), scored at
    every evaluation beside dev; a client outside `clients` takes part in no round."""
    cfg = tiny_cfg(tiny_models["opt"], data_dir, clients=3, rounds=2, train_size=60, validation_size=12)
    inputs = subsample_dev(read_inputs(cfg), 16)
    setup = make_setup(cfg, inputs)
    assert len(setup.train.ids) == 48 and len(setup.validation[0]) == 12 and sum(map(len, setup.parts)) == 48
    result = run_method(make_method(name, setup), clients=[0, 2])
    assert [h["clients"] for h in result["history"]] == [2, 2]
    assert {"validation_accuracy", "validation_loss", "dev_loss"} <= set(result["initial_evaluation"])
    assert all({"dev_accuracy", "validation_accuracy", "validation_loss"} <= set(h) for h in result["history"])
    if name == "zorba-all":
        assert all(set(h["blocks"]) == {"0", "2"} for h in result["history"])


def test_fedavg_uplink_is_the_safetensors_of_all_weights(opt_env):
    method = build("fedavg-sgd", opt_env)
    numel = sum(p.numel() for p in method.model.parameters())
    up = method.client_update(0, 0)
    assert len(up.data) == safetensors_size(numel, up.data)
    stats = method.run_round(0, [0, 1])
    assert stats.up_bytes == [len(up.data)] * 2 and stats.down_bytes == [len(up.data)] * 2


def test_fedavg_head_trains_and_sends_only_the_label_head(opt_env):
    """The body stays as loaded (bit for bit, in bf16 storage); only the offsets move and travel."""
    from zorba.core.label_head import label_head_of

    method = build("fedavg-head", opt_env, None, lr=1e-1)
    offset = label_head_of(method.model).offset
    body = {n: p.detach().clone() for n, p in method.model.named_parameters() if p is not offset}
    assert list(method.trainable().values()) == [offset] and method.frozen_precision == "bf16"
    up = method.client_update(0, 0)
    assert len(up.data) == safetensors_size(offset.numel(), up.data)
    method.run_round(0, [0, 1])
    assert offset.abs().sum() > 0
    assert all(torch.equal(p, body[n]) for n, p in method.model.named_parameters() if p is not offset)


@pytest.mark.parametrize("family", ["opt", "bert"])
def test_head_loss_gradient_matches_the_cached_losses_difference(family, tiny_models, data_dir):
    """The first-order head differentiates the very loss zorba's head client perturbs: a central
    difference of `cached_loss` along z equals the gradient of `head_loss` projected on z."""
    from zorba.core.label_head import attach_label_head, label_head_of

    cfg = tiny_cfg(tiny_models[family], data_dir)
    setup = make_setup(cfg, subsample_dev(read_inputs(cfg), 16))
    offset = label_head_of(attach_label_head(setup.lm, 2).model).offset
    with torch.no_grad():
        offset.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    feats = setup.scorer.features(setup.train.ids[:12])
    labels = np.asarray(setup.train.labels[:12])
    rows = [0, 3, 5, 7, 11]
    offset.requires_grad_(True)
    (grad,) = torch.autograd.grad(setup.scorer.head_loss(feats, rows, labels[rows]), offset)
    offset.requires_grad_(False)
    z = torch.randn(offset.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).float()
    eps, base = 1e-3, offset.detach().clone()
    losses = []
    for sign in (1, -1):
        offset.data.copy_(base + sign * eps * z)
        losses.append(setup.scorer.cached_loss(feats, rows, labels[rows]))
    assert (losses[0] - losses[1]) / (2 * eps) == pytest.approx(float((grad * z).sum()), rel=1e-2, abs=1e-4)


def test_fedavg_lora_sends_only_adapters(opt_env):
    method = build("fedavg-lora", opt_env, {"lora_r": 4})
    lora = {n: p for n, p in method.model.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n for n in lora)
    # OPT layer: q,k,v,out (32x32) and fc1 (32->64), fc2 (64->32); LoRA adds r * (in + out) each.
    expected = 2 * 4 * (4 * (32 + 32) + (32 + 64) + (64 + 32))
    assert sum(p.numel() for p in lora.values()) == expected
    up = method.client_update(0, 0)
    assert len(up.data) == safetensors_size(expected, up.data)


def test_fedzo_uplink_is_a_dense_delta(opt_env):
    method = build("fedzo", opt_env)
    numel = sum(p.numel() for p in method.setup.lm.model.parameters())
    before = [p.detach().clone() for p in method.setup.lm.model.parameters()]
    up = method.client_update(0, 0)
    assert len(up.data) == safetensors_size(numel, up.data)
    assert all(torch.equal(a, p) for a, p in zip(before, method.setup.lm.model.parameters(), strict=True))


@pytest.mark.parametrize("k", [16, 200])
def test_fedkseed_uplink_is_k_scalars_whatever_the_steps(opt_env, k):
    for steps in (1, 3):
        method = build("fedkseed", opt_env, {"k_seeds": k}, local_steps=steps)
        stats = method.run_round(0, [0, 1])
        assert stats.up_bytes == [SCALAR_HEADER + 4 * k] * 2
        assert stats.down_bytes == [CATCH_UP_HEADER] * 2  # nothing to replay before round 0
        stats = method.run_round(1, [0, 1])
        assert stats.down_bytes == [CATCH_UP_HEADER + CATCH_UP_ENTRY_HEADER + 4 * k] * 2


def test_decomfl_uplink_is_one_scalar_per_step_and_perturbation(opt_env):
    method = build("decomfl", opt_env, local_steps=3, q=2)
    assert method.run_round(0, [0, 1]).up_bytes == [SCALAR_HEADER + 4 * 3 * 2] * 2
    # a client absent for two rounds replays both
    method.run_round(1, [0])
    assert method.run_round(2, [1]).down_bytes == [CATCH_UP_HEADER + 2 * (CATCH_UP_ENTRY_HEADER + 4 * 6)]


def test_zorba_uplink_is_the_codec_report(opt_env):
    method = build("zorba-all", opt_env, local_steps=3)
    stats = method.run_round(0, [0, 1])
    # codec.encode_report: magic 3 + round, client, loss 12 + metric count 1 + K x q float32
    assert stats.up_bytes == [16 + 3 * 4] * 2


@pytest.mark.parametrize("name", ["decomfl", "fedkseed"])
def test_scalar_replay_reproduces_a_single_clients_local_training(name, opt_env, monkeypatch):
    """One client: the global weights after the server's replay equal that client's local weights; the
    client returned to the global weights by regenerating its steps, holding no copy of them."""
    import importlib

    module = importlib.import_module(f"zorba.methods.{name}")
    method = build(name, opt_env, clients=1)
    captured = {}
    revert = module.revert_local_steps

    def capture_then_revert(replica, *args):
        captured["local"] = [t.detach().clone() for ts in replica.tensors for t in ts]
        revert(replica, *args)
        captured["reverted"] = [t.detach().clone() for ts in replica.tensors for t in ts]

    monkeypatch.setattr(module, "revert_local_steps", capture_then_revert)
    monkeypatch.setattr(method.replica, "snapshot", lambda blocks: 1 / 0)  # as its authors wrote it: no copy
    initial = [t.detach().clone() for ts in method.replica.tensors for t in ts]
    method.run_round(0, [0])
    for a, b in zip(captured["reverted"], initial, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    after = [t for ts in method.replica.tensors for t in ts]
    assert any(not torch.equal(a, b) for a, b in zip(after, initial, strict=True))
    for a, b in zip(after, captured["local"], strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["opt", "bert"])
def test_first_order_loss_equals_the_scorers(family, tiny_models, data_dir):
    cfg = tiny_cfg(tiny_models[family], data_dir)
    setup = make_setup(cfg, subsample_dev(read_inputs(cfg), 16))
    seqs, labels = setup.batch(0, 0, 0)
    with torch.no_grad():
        mine = float(loss_with_grad(setup.scorer, setup.lm.model, seqs, labels))
    assert mine == pytest.approx(setup.scorer.loss(seqs, labels), rel=1e-5)


@pytest.mark.parametrize("name", ["fedavg-adam", "fedavg-lora", "fedavg-head"])
def test_first_order_training_lowers_the_loss(name, opt_env):
    method = build(name, opt_env, None, lr={"fedavg-adam": 1e-3, "fedavg-lora": 1e-2, "fedavg-head": 1e-2}[name],
                   local_steps=4, head_steps=20)
    train = method.setup.train
    before = method.setup.scorer.loss(train.ids, train.labels)
    for t in range(3):
        method.run_round(t, [0, 1])
    after = method.setup.scorer.loss(train.ids, train.labels)
    assert after < before - 0.01, (before, after)


def test_pdss_prefers_seeds_with_large_scalars():
    assert np.allclose(pdss_probabilities(np.zeros(4), 2.0), 0.25)
    p = pdss_probabilities(np.array([0.0, 1.0, 3.0, 0.0]), 2.0)
    assert p[2] > p[1] and p[0] == pytest.approx(p[3]) and p.sum() == pytest.approx(1.0)


def test_scalar_message_roundtrip_and_size():
    data = encode_scalars(3, 7, [0.5, -1.25])
    assert len(data) == SCALAR_HEADER + 8 and decode_scalars(data) == (3, 7, (0.5, -1.25))
    with pytest.raises(ValueError):
        decode_scalars(data[:-1])


def test_zorba_options_planner_meets_the_run_configs_rules(opt_env):
    """The options' planner goes through RunConfig's validation: a memory cap is the zorba planner's alone."""
    from zorba.errors import UserError

    assert build("zorba", opt_env, {"planner": "fill"}).cfg.planner == "fill"
    with pytest.raises(UserError, match="memory_cap_mib"):
        build("zorba", opt_env, {"planner": "fill"}, planner="zorba", memory_cap_mib=500.0)


@pytest.mark.parametrize("family", ["opt", "bert"])
def test_lora_on_a_bf16_base_computes_in_fp32(family, tiny_models, data_dir):
    """FedAvg-LoRA stores its frozen base as zorba's clients do (bf16) and computes in fp32: its loss and
    adapter gradients equal those of an fp32 base holding the same bf16-rounded values."""
    cfg = tiny_cfg(tiny_models[family], data_dir)
    inputs = subsample_dev(read_inputs(cfg), 16)

    def loss_and_grads(precision: str):
        lm = load_model(cfg.model)
        with torch.no_grad():
            for p in lm.model.parameters():
                p.copy_(p.to(torch.bfloat16).float())
        method = make_method("fedavg-lora", make_setup(cfg.model_copy(update={"precision": precision}), inputs, lm),
                             {"lora_r": 4})
        with torch.no_grad():  # non-zero adapters, so the base's gradient path is exercised
            for p in method.trainable().values():
                p.copy_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        seqs, labels = method.setup.batch(0, 0, 0)
        loss = loss_with_grad(method.setup.scorer, method.model, seqs, labels)
        loss.backward()
        return float(loss.detach()), {n: p.grad.clone() for n, p in method.trainable().items()}, method.frozen_precision

    loss16, grads16, kind16 = loss_and_grads("bf16")
    loss32, grads32, kind32 = loss_and_grads("fp32")
    assert (kind16, kind32) == ("bf16", "fp32")
    assert loss16 == pytest.approx(loss32, rel=1e-5)
    assert grads16.keys() == grads32.keys()
    for name, g in grads16.items():
        assert torch.allclose(g, grads32[name], rtol=1e-4, atol=1e-7), name


def test_lora_adapters_follow_the_run_seed(opt_env):
    """peft draws the adapters from torch's global generator: a run's seed, not the process, decides them."""
    def adapters(seed):
        cfg, inputs, _ = opt_env
        method = make_method("fedavg-lora", make_setup(cfg.model_copy(update={"seed": seed}), inputs,
                                                       load_model(cfg.model)), {"lora_r": 4})
        return {n: p.detach().clone() for n, p in method.trainable().items()}

    torch.manual_seed(123)
    first = adapters(0)
    state = torch.random.get_rng_state()
    torch.manual_seed(456)  # another global state: the same adapters
    again = adapters(0)
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert any(not torch.equal(first[n], v) for n, v in adapters(1).items())
    torch.manual_seed(123)
    adapters(5)
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator is left as it was


TIMINGS = {"seconds", "client_seconds", "wall_seconds"}


def _without_timings(value):
    """A run's record with its clock readings left out: they are the only part a seed does not fix."""
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if k not in TIMINGS and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [_without_timings(v) for v in value]
    return value


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_each_method_is_reproducible_from_its_seed(name, opt_env):
    """Two runs of one config give the same record, whatever torch's global generator holds: the bench's
    cells, tuning runs and seeds can be re-run and compared."""
    cfg, inputs, _ = opt_env
    runs = []
    for global_seed in (1, 2):
        torch.manual_seed(global_seed)
        runs.append(_without_timings(run_method(make_method(name, make_setup(cfg, inputs, load_model(cfg.model))))))
    assert runs[0] == runs[1]
    assert runs[0]["history"] and runs[0]["dev_predictions"]


@pytest.mark.parametrize("name", ["fedavg-head", "decomfl"])
def test_example_weights_average_clients_by_their_training_examples(name, opt_env):
    """`weights = "examples"`: the server's average is each upload times its client's share of the
    training examples (McMahan et al.'s FedAvg, zorba's server); "equal" stays the plain mean."""
    from zorba.methods.wire import decode_scalars, tensors_from_bytes

    method = build(name, opt_env, {"weights": "examples"}, lr=1e-2)
    sizes = np.asarray([len(p) for p in method.setup.parts], dtype=np.float64)
    assert sizes[0] != sizes[1]
    np.testing.assert_allclose(method.client_weights([0, 1]), sizes / sizes.sum())
    assert build(name, opt_env).client_weights([0, 1]) is None
    uploads = []
    real = method.train_client
    method.train_client = lambda cid, r: uploads.append(real(cid, r)) or uploads[-1]
    method.run_round(0, [0, 1])
    w = sizes / sizes.sum()
    if name == "fedavg-head":
        ups = [tensors_from_bytes(u.data) for u in uploads]
        for key, value in method.global_state.items():
            torch.testing.assert_close(value, float(w[0]) * ups[0][key] + float(w[1]) * ups[1][key])
    else:
        ups = [np.asarray(decode_scalars(u.data)[2], dtype=np.float64) for u in uploads]
        np.testing.assert_allclose(method.history[-1][1], (w[0] * ups[0] + w[1] * ups[1]).astype(np.float32))
