"""Build a client's replica straight from a safetensors checkpoint, never holding the model in fp32.

`models.load_model` + `precision.make_client_replica` first materialise the whole fp32 model (and
touch every page of the mapped checkpoint), then move the exact weights to the MasterStore and keep a
frozen-dtype working copy: the process peaks at runtime + 2 x the fp32 model while loading, above
what the client needs to train. Here instead:

1. the model is built with its parameters on the meta device (accelerate's `init_empty_weights`,
   buffers real, so they are computed exactly as from_config computes them) and its tied weights are
   tied as from_pretrained ties them;
2. each parameter is read from the checkpoint a few rows at a time straight into the MasterStore
   (an unlinked file on a CPU client: page cache, not resident set), the file opened per read so its
   mapped pages are released at once;
3. the parameters become empty tensors of their working dtype, and TieredReplica derives their
   values from the store, as it does after every replay.

The process so holds the runtime, the frozen-dtype working copy and one read's scratch. The result
is bit-identical to `make_client_replica(load_model(...))` (tests/test_streamload.py). Anything this
does not cover falls back to that full load: a checkpoint that is not safetensors, a quantized one,
a parameter missing from it (from_pretrained would initialise it) or present under more than one tied
name, a shape or dtype that does not match, persistent buffers.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from zorba.core.blocks import LABEL_HEAD_MODULE
from zorba.core.label_head import LabelHead, attach_label_head, class_width
from zorba.core.models import LoadedModel, load_config_and_tokenizer, load_model, loaded, model_kind
from zorba.core.replica import Replica
from zorba.memory.precision import (
    MasterStore,
    TieredReplica,
    frozen_dtype,
    make_client_replica,
    working_dtype,
)
from zorba.memory.quant import int8_eligible

log = logging.getLogger(__name__)
_READ_ELEMENTS = 1 << 20  # elements read from the checkpoint at a time (4 MiB of fp32)
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16"}


class _NotCovered(Exception):
    """The checkpoint needs from_pretrained's full load (the message says why)."""


def load_client_replica(name_or_path: str, precision: str = "bf16", device: str | torch.device = "cpu",
                        store: str = "auto", label_head: int = 0) -> Replica:
    """The replica a client trains on, as `make_client_replica(load_model(name_or_path), precision)`
    gives it, read from a safetensors checkpoint without holding the fp32 model; other checkpoints
    take that full load (see the module docstring). `label_head` > 0: with a label head of that many
    classes (core/label_head.py): zero, or the one a checkpoint zorba exported holds."""
    frozen_dtype(precision)  # a bad precision is the user's error before anything is read
    device = torch.device(device)
    source, config, tokenizer = load_config_and_tokenizer(name_or_path)
    try:
        files = checkpoint_files(source)
        model = _empty_model(config)
        if label_head:  # before the plan: a checkpoint zorba exported holds a trained head to read
            model.add_module(LABEL_HEAD_MODULE, LabelHead(label_head, class_width(model, model_kind(config))))
        plan = _checkpoint_plan(model, files)
    except _NotCovered as why:
        log.info("%s: full load (%s)", name_or_path, why)
        lm = load_model(name_or_path)
        if label_head:
            attach_label_head(lm, label_head)
        lm.model.to(device)
        return make_client_replica(lm, precision, store)
    _move_buffers(model, device)
    _materialize(model, device, _working_dtypes(model, precision))
    lm = loaded(model, tokenizer, model_kind(config), name_or_path)
    return TieredReplica(lm, precision, store, master=_streamed_store(lm, plan, files, device, store))


def _working_dtypes(model: nn.Module, precision: str) -> Callable[[nn.Parameter], torch.dtype]:
    frozen = frozen_dtype(precision)
    eligible = int8_eligible(model) if frozen == torch.int8 else set()
    return lambda p: working_dtype(frozen, id(p) in eligible)


def _streamed_store(lm: LoadedModel, plan: dict[str, str], files: dict[str, Path], device: torch.device,
                    kind: str) -> MasterStore:
    """The MasterStore of lm's blocks, filled from the checkpoint tensors `plan` names."""
    params = dict(lm.model.named_parameters())
    store = MasterStore([[params[n].shape for n in block.param_names] for block in lm.blocks], device, kind)
    for b, block in enumerate(lm.blocks):
        for i, name in enumerate(block.param_names):
            if name in plan:
                _stream_tensor(store, b, i, files[plan[name]], plan[name])
            else:  # the label head starts at zero
                store.write(b, i, 0, torch.zeros(math.prod(params[name].shape)))
    return store


def checkpoint_files(source: str) -> dict[str, Path]:
    """Each tensor name of a model folder's safetensors checkpoint (single file or sharded), with the
    file that holds it; raises _NotCovered for other checkpoints."""
    folder = Path(source)
    if not folder.is_dir():
        folder = _hub_snapshot(source)
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    from safetensors import safe_open

    try:  # an unreadable checkpoint takes the full load, which reports it as the user's error
        if single.is_file():
            with safe_open(single, framework="pt") as f:
                return dict.fromkeys(f.keys(), single)
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            return {k: folder / name for k, name in weight_map.items()}
    except Exception as exc:  # safetensors, json and OS errors alike
        raise _NotCovered(f"{source}: {type(exc).__name__}") from None
    raise _NotCovered(f"{source}: no safetensors checkpoint")


def _hub_snapshot(repo_id: str) -> Path:
    """The offline cache's snapshot folder of a hub model (found through its config file)."""
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(config, str):
        raise _NotCovered(f"{repo_id}: not a local folder or cached hub snapshot")
    return Path(config).parent


def _empty_model(config) -> nn.Module:
    """The model `load_model` builds, with parameters on the meta device and weights tied."""
    if getattr(config, "quantization_config", None) is not None:
        raise _NotCovered("quantized checkpoint")
    from accelerate import init_empty_weights
    from transformers import AutoModel, AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        if model_kind(config) == "causal":
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        else:
            try:  # as models._load_encoder: no pooler
                model = AutoModel.from_config(config, dtype=torch.float32, add_pooling_layer=False)
            except TypeError:
                model = AutoModel.from_config(config, dtype=torch.float32)
    model.tie_weights()  # from_pretrained ties after loading; from_config (transformers 5) does not
    return model


def _checkpoint_plan(model: nn.Module, files: dict[str, Path]) -> dict[str, str]:
    """Per parameter (first name, as named_parameters gives it), its checkpoint tensor's name."""
    if any(name.rsplit(".", 1)[-1] not in _owner(model, name)._non_persistent_buffers_set
           for name, _ in model.named_buffers()):
        raise _NotCovered("persistent buffers")
    aliases: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(p), []).append(name)
    plan = {}
    for name, p in model.named_parameters():
        if name.startswith(LABEL_HEAD_MODULE + ".") and name not in files:
            continue  # zeros, not read (_streamed_store)
        present = [a for a in aliases[id(p)] if a in files]
        if len(present) != 1:
            raise _NotCovered(f"{name}: {len(present)} checkpoint tensors")
        plan[name] = present[0]
        _check_tensor(files[present[0]], present[0], tuple(p.shape))
    return plan


def _owner(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model


def _check_tensor(path: Path, key: str, shape: tuple[int, ...]) -> None:
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt") as f:
            sl = f.get_slice(key)
            found, dtype = tuple(sl.get_shape()), sl.get_dtype()
    except Exception as exc:  # a shard missing or unreadable: as in checkpoint_files
        raise _NotCovered(f"{path.name}: {type(exc).__name__}") from None
    if found != shape or dtype not in _FLOAT_DTYPES:
        raise _NotCovered(f"{key}: {dtype} {found} in the checkpoint, the model wants {shape}")


def _move_buffers(model: nn.Module, device: torch.device) -> None:
    """Buffers to the device (model.to would also try to move the meta parameters)."""
    for module in model.modules():
        for name, buf in module._buffers.items():  # noqa: SLF001 - no public setter keeps the buffer's registration
            if buf is not None:
                module._buffers[name] = buf.to(device)  # noqa: SLF001


def _materialize(model: nn.Module, device: torch.device, dtype_of: Callable[[nn.Parameter], torch.dtype]) -> None:
    """Replace each meta parameter by an empty one of its working dtype on the device, the same new
    parameter in every module that shares it (so ties survive). Empty: TieredReplica writes them."""
    new: dict[int, nn.Parameter] = {}
    for module in model.modules():
        for name, p in module._parameters.items():  # noqa: SLF001 - swapping tensors of a fixed structure
            if p is None:
                continue
            if id(p) not in new:
                new[id(p)] = nn.Parameter(torch.empty(p.shape, dtype=dtype_of(p), device=device), requires_grad=False)
            module._parameters[name] = new[id(p)]  # noqa: SLF001


def _stream_tensor(store: MasterStore, b: int, i: int, path: Path, key: str) -> None:
    """Tensor `key` into the store, whole rows at a time, converted to fp32 as from_pretrained does.
    The file is reopened per read: its mapping, and so the pages a read touched, go when it closes."""
    from safetensors import safe_open

    shape = store.shapes[b][i]
    if not shape:  # a scalar: nothing to slice
        with safe_open(path, framework="pt") as f:
            store.write(b, i, 0, f.get_tensor(key).reshape(-1).to(torch.float32))
        return
    row = math.prod(shape[1:])
    step = max(1, _READ_ELEMENTS // max(row, 1))
    for r in range(0, shape[0], step):
        with safe_open(path, framework="pt") as f:
            store.write(b, i, r * row, f.get_slice(key)[r : r + step].reshape(-1).to(torch.float32))
