"""The exported model (`model/`): every tensor of the base checkpoint, the trained ones as trained.

Why more than `save_pretrained`: zorba loads an encoder without its pooler (mean pooling ignores it,
and a block that only adds ZO noise is worse than none), so the trained module lacks tensors the base
checkpoint has. Saved as is, `from_pretrained` would report them missing and initialise them at
random. They were never trained, so the export copies them from the base checkpoint, unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from zorba.core.models import LoadedModel, resolve_source

_SINGLE, _INDEX = "model.safetensors", "model.safetensors.index.json"


def save_model(lm: LoadedModel, folder: Path) -> None:
    """save_pretrained, plus the base tensors the trained module does not hold."""
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    extras = base_extras(lm.source, set(lm.model.state_dict()))
    if extras:
        _add_tensors(folder, extras)


def base_checkpoint_files(source: str) -> list[Path]:
    """The base model's safetensors files (local folder or offline cache); [] when it has none
    (a pickled checkpoint is never opened: it could run code)."""
    folder = Path(resolve_source(source))
    if folder.is_dir():
        return sorted(folder.glob("*.safetensors"))
    from transformers.utils import cached_file

    for name in (_SINGLE, _INDEX):
        path = cached_file(source, name, local_files_only=True, _raise_exceptions_for_missing_entries=False)
        if path and name == _SINGLE:
            return [Path(path)]
        if path:
            shards = sorted(set(json.loads(Path(path).read_text())["weight_map"].values()))
            return [Path(cached_file(source, s, local_files_only=True)) for s in shards]
    return []


def base_extras(source: str, have: set[str]) -> dict[str, torch.Tensor]:
    """Tensors of the base checkpoint whose names the trained module's state does not hold."""
    extras = {}
    for path in base_checkpoint_files(source):
        with safe_open(str(path), "pt") as f:
            extras.update({k: f.get_tensor(k) for k in f.keys() if k not in have})
    return extras


def _add_tensors(folder: Path, extras: dict[str, torch.Tensor]) -> None:
    """Into the single weights file, or as one more shard named in the index."""
    index = folder / _INDEX
    if not index.is_file():
        tensors = {**load_file(str(folder / _SINGLE)), **extras}
        save_file(tensors, str(folder / _SINGLE), metadata={"format": "pt"})
        return
    save_file(extras, str(folder / "model-base-extras.safetensors"), metadata={"format": "pt"})
    data = json.loads(index.read_text())
    data["weight_map"].update({k: "model-base-extras.safetensors" for k in extras})
    index.write_text(json.dumps(data, indent=2))
