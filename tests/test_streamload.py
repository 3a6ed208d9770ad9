"""Streaming a safetensors checkpoint into a client's replica: bit-identical to the full load, and
the process never holds the fp32 model (its loading peak stays below its training peak)."""

import shutil

import pytest
import torch
from conftest import DATA

import zorba.memory.streamload as streamload
from zorba.core.models import load_model
from zorba.federation.memprobe import MemoryProbe, measure
from zorba.memory.precision import make_client_replica
from zorba.memory.quant import SCALE_ATTR
from zorba.memory.streamload import load_client_replica

FAMILIES = ("bert", "opt", "llama", "gpt2")
MiB = 1 << 20


def _no_full_load(monkeypatch):
    """Make a fallback to the full load fail the test: it would compare the full load with itself."""
    def refuse(*args, **kwargs):
        raise AssertionError("the streaming path fell back to the full load")

    monkeypatch.setattr(streamload, "load_model", refuse)


def assert_same_replica(ref, new) -> None:
    """Same exact fp32 state, same working tensors (dtype, values, int8 scales), ties, buffers, outputs."""
    assert new.digest() == ref.digest()
    ref_model, new_model = ref.lm.model, new.lm.model
    assert type(new_model) is type(ref_model)
    ref_params = dict(ref_model.named_parameters(remove_duplicate=False))
    new_params = dict(new_model.named_parameters(remove_duplicate=False))
    assert new_params.keys() == ref_params.keys()
    assert len(list(new_model.parameters())) == len(list(ref_model.parameters()))  # the same ties
    for name, r in ref_params.items():
        n = new_params[name]
        assert n.dtype == r.dtype and n.device == r.device and torch.equal(n, r), name
        assert hasattr(n, SCALE_ATTR) == hasattr(r, SCALE_ATTR), name
        if hasattr(r, SCALE_ATTR):
            assert torch.equal(getattr(n, SCALE_ATTR), getattr(r, SCALE_ATTR)), name
    ref_bufs, new_bufs = dict(ref_model.named_buffers()), dict(new_model.named_buffers())
    assert new_bufs.keys() == ref_bufs.keys()
    for name, r in ref_bufs.items():
        assert new_bufs[name].dtype == r.dtype and torch.equal(new_bufs[name], r), name
    ids = torch.randint(0, 1000, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(new_model(input_ids=ids)[0], ref_model(input_ids=ids)[0])


@pytest.mark.parametrize("precision", ["bf16", "int8", "fp16", "fp32"])
@pytest.mark.parametrize("family", FAMILIES)
def test_streamed_replica_equals_full_load(tiny_models, family, precision, monkeypatch):
    ref = make_client_replica(load_model(str(tiny_models[family])), precision)
    _no_full_load(monkeypatch)
    assert_same_replica(ref, load_client_replica(str(tiny_models[family]), precision))


def test_default_model_streams_bit_identically(monkeypatch):
    ref = make_client_replica(load_model("minilm"), "bf16")
    _no_full_load(monkeypatch)
    assert_same_replica(ref, load_client_replica("minilm", "bf16"))


def _copy_with_weights(src, dst, save) -> str:
    """A copy of model folder `src` whose weights are written by save(model, dst)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("model*.safetensors*"))
    save(load_model(str(src)).model, dst)
    return str(dst)


def test_sharded_checkpoint_streams(tiny_models, tmp_path, monkeypatch):
    folder = _copy_with_weights(tiny_models["opt"], tmp_path / "opt",
                                lambda m, d: m.save_pretrained(d, max_shard_size="300KB"))
    assert (tmp_path / "opt" / "model.safetensors.index.json").is_file()
    ref = make_client_replica(load_model(folder), "bf16")
    _no_full_load(monkeypatch)
    assert_same_replica(ref, load_client_replica(folder, "bf16"))


def _count_full_loads(monkeypatch) -> list:
    calls = []

    def counted(name):
        calls.append(name)
        return load_model(name)

    monkeypatch.setattr(streamload, "load_model", counted)
    return calls


def test_non_safetensors_checkpoint_takes_the_full_load(tiny_models, tmp_path, monkeypatch):
    folder = _copy_with_weights(tiny_models["gpt2"], tmp_path / "gpt2",
                                lambda m, d: torch.save(m.state_dict(), d / "pytorch_model.bin"))
    ref = make_client_replica(load_model(folder), "bf16")
    calls = _count_full_loads(monkeypatch)
    assert_same_replica(ref, load_client_replica(folder, "bf16"))
    assert calls == [folder]


def test_missing_parameter_takes_the_full_load(tiny_models, tmp_path, monkeypatch):
    """from_pretrained initialises a parameter the checkpoint lacks; streaming must not guess it."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "llama"
    shutil.copytree(tiny_models["llama"], folder)
    tensors = load_file(folder / "model.safetensors")
    del tensors["model.norm.weight"]
    save_file(tensors, folder / "model.safetensors", metadata={"format": "pt"})
    calls = _count_full_loads(monkeypatch)
    load_client_replica(str(folder), "bf16")
    assert calls == [str(folder)]


def test_unknown_model_is_the_users_error(tmp_path):
    from zorba.errors import UserError

    with pytest.raises(UserError, match="not a local model folder"):
        load_client_replica(str(tmp_path / "nowhere"), "bf16")


def test_streamed_load_peaks_below_training_and_the_full_load():
    """MiniLM (87 MiB in fp32), one trained block, in fresh processes: streaming loads at or below
    the round's training peak, and at least half the fp32 model below the full load's peak."""
    probe = dict(model="minilm", task="sst2", blocks=(1,), batch_size=16, max_len=64, data_dir=str(DATA))
    streamed = measure(MemoryProbe(**probe, load="stream"), timeout=300)
    full = measure(MemoryProbe(**probe, load="full"), timeout=300)
    assert streamed["peak_reset"] and full["peak_reset"]
    fp32_model = 4 * streamed["params"]
    assert streamed["load_peak_rss_bytes"] <= streamed["peak_rss_bytes"], (streamed, full)
    assert streamed["load_peak_rss_bytes"] <= full["load_peak_rss_bytes"] - fp32_model / 2, (streamed, full)
    assert streamed["process_peak_rss_bytes"] == streamed["peak_rss_bytes"]


def test_truncated_checkpoint_is_the_users_error(tiny_models, tmp_path):
    from zorba.errors import UserError

    folder = tmp_path / "bert"
    shutil.copytree(tiny_models["bert"], folder)
    weights = folder / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(UserError, match="weights cannot be loaded"):
        load_client_replica(str(folder), "bf16")
