"""Shared fixtures: tiny random-weight models of each family, built from configs (no hub), and the data."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]


def find_shared_data() -> Path:
    for p in (REPO, *REPO.parents):
        if (p / "shared" / "data" / "sst2" / "train.tsv").is_file():
            return p / "shared" / "data"
    raise RuntimeError("shared/data not found next to the repository")


DATA = find_shared_data()


def _tiny_config(family: str):
    import transformers as tf

    common = dict(vocab_size=30522)
    if family == "opt":
        return tf.OPTConfig(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                            word_embed_proj_dim=32, max_position_embeddings=256, **common)
    if family == "llama":
        return tf.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              num_key_value_heads=1, max_position_embeddings=256, **common)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=256, **common)
    if family == "bert":
        return tf.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             max_position_embeddings=256, **common)
    raise ValueError(family)


def build_tiny_model(family: str, folder: Path) -> Path:
    """Save a seeded random-weight model of `family` plus the default model's tokenizer (vocab 30522)."""
    import torch
    import transformers as tf

    from zorba.core.models import resolve_source

    torch.manual_seed(0)
    config = _tiny_config(family)
    cls = tf.BertModel if family == "bert" else tf.AutoModelForCausalLM
    model = cls(config, add_pooling_layer=False) if family == "bert" else cls.from_config(config)
    if family != "bert":
        config.architectures = [type(model).__name__]
    model.save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(resolve_source("minilm")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {f: build_tiny_model(f, root / f) for f in ("opt", "llama", "gpt2", "bert")}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture
def zorba(capsys, monkeypatch):
    """The real `zorba` entry point, in-process (a subprocess per case would cost seconds of imports):
    returns exit code, stdout and stderr."""
    from zorba.cli import app as cli

    def call(*args):
        monkeypatch.setattr(sys, "argv", ["zorba", *args])
        with pytest.raises(SystemExit) as exc:
            cli.main()
        out = capsys.readouterr()
        return SimpleNamespace(returncode=exc.value.code, stdout=out.out, stderr=out.err)

    return call


def assert_clean_error(res, *fragments):
    """A bad input: exit code 2 and one line on stderr holding every fragment, no traceback."""
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = [ln for ln in res.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for f in fragments:
        assert f in lines[0], lines[0]
