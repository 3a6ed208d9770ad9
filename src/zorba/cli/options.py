"""The training options `zorba run` and `zorba flower-sim` share, declared once.

typer builds a command's options from its function's signature, so `training_options` grafts these
parameters onto the signature of a command that takes them as `**options`; each command declares only
the options of its own engine.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

_SHARED = (  # name, type, default, help
    ("task", str, None, "sst2 or rte [sst2]"),
    ("model", str, None, "HF model id or local folder; 'minilm' = embedded default [minilm]"),
    ("clients", int, None, "number of clients [8]"),
    ("rounds", int, None, "federated rounds [30]"),
    ("local_steps", int, None, "local ZO steps per round [5]"),
    ("lr", float, None, "learning rate (of a client perturbing every block) [the planner's, as its study chose it: "
     "STUDY_LR in federation/config.py]"),
    ("lr_exponent", float, None, "step rule: a client perturbing d of the model's D weights steps with "
     "lr (D/d)^this; 0 = one lr for all"),
    ("mu", float, None, "perturbation scale"),
    ("q", int, None, "perturbations per step [1]"),
    ("batch_size", int, None, "mini-batch size [16]"),
    ("max_len", int, None, "max tokens per example [64]"),
    ("alpha", float, None, "Dirichlet label-skew concentration [0.5]"),
    ("planner", str, None, "feasible-round-robin | fill | feasible-random | fedra | zorba | all-if-fits | head | "
     "all (docs/theory.md)"),
    ("memory_cap_mib", float, None, "zorba planner: cap on the clients' total memory, MiB (epsilon) [none]"),
    ("dist", str, None, "perturbation distribution: rademacher | gaussian"),
    ("participation", float, None, "fraction of clients per round [1.0]"),
    ("train_size", int, None, "subsample the training split to this many examples [all]"),
    ("validation_size", int, None, "hold this many training examples out of every client, evaluated "
     "beside dev (where step sizes are chosen)"),
    ("eval_every", int, None, "evaluate on dev every this many rounds"),
    ("seed", int, None, "run seed: every random choice derives from it"),
    ("data_dir", Path, None, "folder with <task>/train.tsv and dev.tsv [$ZORBA_DATA_DIR, else shared/data or data "
     "in the working directory or a parent]"),
    ("precision", str, None, "frozen blocks' dtype on clients: int8 (weight-only, per-row scales) | bf16 | "
     "fp16 | fp32 [bf16]"),
    ("profiles", Path, None, "TOML of the clients' memory budgets and speeds (format: src/zorba/memory/profiles.py) "
     "[four default device classes]"),
    ("memory_model", Path, None, "calibration JSON from `zorba profile-memory`: budgets and predictions in "
     "measured bytes [first principles: tensors only]"),
    ("head_pool", int, None, "examples whose features a client training the label head alone computes once "
     "a round [160]"),
    ("head_steps", int, None, "local steps of a client that trains the label head alone [local_steps]"),
    ("measure_memory", bool, True, "measure each client's peak memory in a fresh process"),
    ("overwrite", bool, False, "replace an existing output folder"),
)
_NOT_CONFIG = {"overwrite"}


def training_options(**help_overrides: str) -> Callable[[Callable], Callable]:
    """Decorator: the shared options (first, in the order above), then the command's own parameters."""

    def graft(command: Callable) -> Callable:
        own = [p for p in inspect.signature(command).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        shared = [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=kind,
                              default=typer.Option(default, help=with_default(name, help_overrides.get(name, text))))
            for name, kind, default, text in _SHARED
        ]
        command.__signature__ = inspect.Signature(shared + own)
        return command

    return graft


_HAND_WRITTEN_DEFAULT = re.compile(r" *\[[^\]]*\]$")


_HELP = {name: text for name, _, _, text in _SHARED}


def option(name: str, help: str | None = None) -> Any:
    """One shared option with RunConfig's default as its own default (typer prints it), for a command
    that takes a few training options and nothing to resume (`zorba plan`, `zorba profile-memory`)."""
    from zorba.federation.config import RunConfig

    default, text = _declared_default(RunConfig, name), help or _HELP[name]
    return typer.Option(default, help=_escape_default(text) if default is None else _HAND_WRITTEN_DEFAULT.sub("", text))


def _escape_default(text: str) -> str:
    """A hand-written "[default]" at the end, escaped for rich markup (see with_default)."""
    return _HAND_WRITTEN_DEFAULT.sub(lambda m: " \\" + m.group(0).lstrip(), text)


def with_default(name: str, text: str, owner: type | None = None) -> str:
    """The help text with the default its owner declares appended (RunConfig's unless `owner`, a
    pydantic model or a dataclass, is given): the one place defaults are written."""
    if owner is None:
        from zorba.federation.config import RunConfig

        owner = RunConfig
    default = _declared_default(owner, name)
    if default is None:
        return _escape_default(text)
    # Escaped: typer renders help as rich markup, where "[zorba]" or "[bf16]" would be read as a
    # style tag and dropped (a number like "[5e-05]" survives, which hid the loss).
    return f"{_HAND_WRITTEN_DEFAULT.sub('', text)} \\[{default}]"


def _declared_default(owner: type, name: str) -> object:
    if dataclasses.is_dataclass(owner):
        found = {f.name: f.default for f in dataclasses.fields(owner)}
        return found.get(name)
    field = owner.model_fields.get(name)
    return None if field is None else field.default


def config_values(options: dict) -> dict:
    """The shared options that are RunConfig fields, as make_config takes them (paths as strings)."""
    values = {k: v for k, v in options.items() if k not in _NOT_CONFIG}
    for key in ("data_dir", "profiles", "memory_model"):  # RunConfig keeps paths as strings (JSON-able)
        values[key] = str(values[key]) if values.get(key) else None
    return values
