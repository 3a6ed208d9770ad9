import pytest

from zorba.core.blocks import split_into_blocks
from zorba.core.models import load_model


@pytest.mark.parametrize("family", ["opt", "llama", "gpt2", "bert"])
def test_blocks_cover_every_parameter_once(family, tiny_models):
    lm = load_model(str(tiny_models[family]))
    names = [n for b in lm.blocks for n in b.param_names]
    assert sorted(names) == sorted(n for n, _ in lm.model.named_parameters())
    assert len(names) == len(set(names))
    assert lm.blocks[0].name == "embeddings"
    assert [b.name for b in lm.blocks if b.name.startswith("layer.")] == ["layer.0", "layer.1"]
    assert lm.kind == ("encoder" if family == "bert" else "causal")


@pytest.mark.parametrize("family,head", [("opt", True), ("llama", True), ("gpt2", True), ("bert", False)])
def test_final_norm_lands_in_head(family, head, tiny_models):
    lm = load_model(str(tiny_models[family]))
    assert (lm.blocks[-1].name == "head") == head
    embed = set(lm.blocks[0].param_names)
    assert not any("final_layer_norm" in n or n.endswith("norm.weight") and "layers" not in n for n in embed)


def test_default_model_has_embeddings_and_six_layers():
    lm = load_model()
    assert [b.name for b in lm.blocks] == ["embeddings"] + [f"layer.{i}" for i in range(6)]
    assert lm.kind == "encoder"


def test_split_is_deterministic(tiny_models):
    lm = load_model(str(tiny_models["opt"]))
    assert split_into_blocks(lm.model) == lm.blocks
