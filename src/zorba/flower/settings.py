"""The Flower app's configuration: `[tool.flwr.app.config]` (kebab-case keys, as Flower wants them)
turned into the same RunConfig `zorba run` uses, plus the few options only Flower runs have."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from zorba.errors import UserError
from zorba.federation.config import RunConfig, make_config

# run_config keys that are not RunConfig fields
_FLOWER_KEYS = {"out", "overwrite", "round-timeout", "node-wait", "faults", "torch-threads"}


@dataclass(frozen=True)
class FlowerOptions:
    out: str = ""  # folder for result.json etc.; empty = do not write outputs
    overwrite: bool = False  # replace `out` if it holds a zorba run (and only then)
    round_timeout: float = 600.0  # seconds the server waits for a round's reports
    node_wait: float = 120.0  # seconds the server waits for enough SuperNodes to connect
    faults: str = ""  # chaos testing, see faults.py
    torch_threads: int = 1  # intra-op threads per ClientApp (same count => same float results)


def split_run_config(run_config: Mapping[str, object]) -> tuple[RunConfig, FlowerOptions]:
    """Flower run config -> (RunConfig, FlowerOptions); unknown keys are a UserError."""
    fields = set(RunConfig.model_fields)
    values, flower = {}, {}
    for key, value in run_config.items():
        name = key.replace("-", "_")
        if key in _FLOWER_KEYS:
            flower[name] = value
        elif name in fields:
            values[name] = _none_if_empty(name, value)
        else:
            raise UserError(f"unknown run-config key {key!r}")
    if isinstance(values.get("block_fractions"), str):
        values["block_fractions"] = tuple(float(x) for x in values["block_fractions"].split(",") if x.strip())
    return make_config(**values), FlowerOptions(**flower)


def _none_if_empty(name: str, value: object) -> object:
    # TOML has no null: "" (or 0 for train-size, memory-cap-mib, head-steps and lr) stands for "not set"
    optional = {"data_dir", "test_file", "profiles", "memory_model"}
    if (name in optional and value == "") or (name in ("train_size", "memory_cap_mib", "head_steps", "lr") and value == 0):
        return None
    return value


def config_to_json(cfg: RunConfig) -> str:
    return cfg.model_dump_json()


def config_from_json(text: str, **overrides: object) -> RunConfig:
    try:
        values = json.loads(text)
    except ValueError:
        raise UserError("zorba setup record: config is not JSON") from None
    values.update({k: v for k, v in overrides.items() if v})
    return make_config(**values)
