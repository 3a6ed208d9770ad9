"""`zorba verify` checks the whole chain and exits 0 ok, 1 differs, 2 cannot check; the exported
model holds every tensor of the base checkpoint and equals the replayed weights."""

import json
import shutil

import pytest
import torch

from zorba.federation.durable import sealed

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pooled_bert(tmp_path_factory):
    """A tiny BERT saved *with* its pooler, as real BERT checkpoints are."""
    import transformers as tf

    from zorba.core.models import resolve_source

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pooled")
    config = tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=256, vocab_size=30522)
    tf.BertModel(config).save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(resolve_source("minilm")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def finished(pooled_bert, tmp_path_factory, data_dir):
    from zorba.experiments.job import run_job
    from zorba.federation.config import make_config

    root = tmp_path_factory.mktemp("data")
    (root / "sst2").mkdir()
    for name, n in (("train", 40), ("dev", 8)):
        lines = (data_dir / "sst2" / f"{name}.tsv").read_text().splitlines()[: n + 1]
        (root / "sst2" / f"{name}.tsv").write_text("\n".join(lines) + "\n")
    cfg = make_config(model=str(pooled_bert), clients=2, rounds=2, local_steps=1, batch_size=4, max_len=16,
                      data_dir=str(root), measure_memory=False, lr=1e-2, planner="all")  # trains every block
    out = tmp_path_factory.mktemp("runs") / "run"
    run_job(cfg, out, progress=False)
    return out


@pytest.fixture
def run_dir(finished, tmp_path):
    shutil.copytree(finished, tmp_path / "run")
    return tmp_path / "run"


def test_export_holds_every_base_tensor_and_the_trained_weights(finished, pooled_bert):
    from safetensors.torch import load_file
    from transformers import AutoModel

    from zorba.core.models import load_model
    from zorba.core.replica import Replica
    from zorba.wire.logio import read_log

    model, info = AutoModel.from_pretrained(finished / "model", output_loading_info=True)
    assert info["missing_keys"] == [] or set(info["missing_keys"]) == set(), info
    base = load_file(str(pooled_bert / "model.safetensors"))
    assert set(base) <= set(load_file(str(finished / "model" / "model.safetensors")))
    replica = Replica(load_model(str(pooled_bert)))
    for entry in read_log(finished / "log.jsonl"):
        replica.apply(entry)
    trained = replica.lm.model.state_dict()
    exported = model.state_dict()
    for name, tensor in exported.items():
        want = trained[name] if name in trained else base[name]
        assert torch.equal(tensor, want), name
    assert any(not torch.equal(trained[n], base[n]) for n in trained if n in base)  # it did train


def test_verify_ok(zorba, finished):
    res = zorba("verify", str(finished))
    assert res.returncode == 0 and "ok" in res.stdout, (res.stdout, res.stderr)


def test_verify_accepts_a_run_from_before_header_checksums(zorba, run_dir):
    def downgrade(h):
        h.update(format="zorba-state/1")
        h.pop("sha256")

    _edit_json(run_dir / "state" / "header.json", downgrade)
    res = zorba("verify", str(run_dir))
    assert res.returncode == 0 and "not checked" in res.stdout, (res.stdout, res.stderr)


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("damage,code,fragment", [
    ("header-mu", 2, "damaged or edited"),
    ("header-resealed-mu", 1, "config differs"),
    ("log-jsonl-shorter", 1, "differs from the durable log"),
    ("log-jsonl-garbage", 2, "malformed log entry"),
    ("log-jsonl-bad-block", 2, "cannot"),
    ("result-not-object", 2, "malformed"),
    ("weights-truncated", 2, "cannot"),
])
def test_verify_exit_codes(damage, code, fragment, zorba, run_dir):
    header, log = run_dir / "state" / "header.json", run_dir / "log.jsonl"
    if damage == "header-mu":
        _edit_json(header, lambda h: h["config"].update(mu=2e-3))
    elif damage == "header-resealed-mu":
        h = json.loads(header.read_text())
        h["config"]["mu"] = 2e-3
        header.write_text(json.dumps(sealed(h)))
    elif damage == "log-jsonl-shorter":
        log.write_text(log.read_text().splitlines()[0] + "\n")
    elif damage == "log-jsonl-garbage":
        log.write_text("[1, 2]\n")
    elif damage == "log-jsonl-bad-block":
        shutil.rmtree(run_dir / "state")  # no durable log to compare with: the replay must catch it
        lines = [json.loads(x) for x in log.read_text().splitlines()]
        lines[0]["updates"][0]["blocks"] = [999]
        log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    elif damage == "result-not-object":
        (run_dir / "result.json").write_text("[]")
    elif damage == "weights-truncated":
        weights = run_dir / "model" / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    res = zorba("verify", str(run_dir))
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    text = res.stdout if code == 1 else res.stderr
    assert fragment in text and "Traceback" not in res.stderr, text


def test_truncated_model_is_one_line(zorba, pooled_bert, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(pooled_bert, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4096])
    res = zorba("run", "--model", str(broken), "--out", str(tmp_path / "out"), "--rounds", "1")
    assert res.returncode == 2 and "cannot be loaded" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
