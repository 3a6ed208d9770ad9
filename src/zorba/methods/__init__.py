"""Federated fine-tuning methods behind one interface (zorba.methods.base.Method), by name: ZorBA
itself (wrapping the federation's runner) and the baselines it is compared with. It may import
zorba.federation and every layer below it, never zorba.flower, an experiment or the command line.

Each name is a method class plus default options, as peft maps a tuner name to its config:
`make_method("fedavg-lora", setup)` or `make_method("fedkseed", setup, {"k_seeds": 256})`."""

from __future__ import annotations

from zorba.errors import UserError
from zorba.methods.base import Method, RoundStats, Setup, Upload, make_setup, parse_options
from zorba.methods.decomfl import DeComFL
from zorba.methods.fedavg import FedAvg
from zorba.methods.fedavg_head import FedAvgHead
from zorba.methods.fedkseed import FedKSeed
from zorba.methods.fedzo import FedZO
from zorba.methods.zorba_method import Zorba

REGISTRY: dict[str, tuple[type[Method], dict]] = {}


def register(name: str, cls: type[Method], **defaults) -> None:
    REGISTRY[name] = (cls, defaults)


register("fedavg-sgd", FedAvg, optimizer="sgd")
register("fedavg-adam", FedAvg, optimizer="adam")
register("fedavg-lora", FedAvg, optimizer="adam", lora=True)
register("fedavg-head", FedAvgHead)  # the label head alone, by backprop: zorba's head planner in first order
register("fedzo", FedZO)
register("fedkseed", FedKSeed)
register("fedkseed-pdss", FedKSeed, pdss=True)
register("decomfl", DeComFL)
register("zorba", Zorba)  # the run's planner: RunConfig's default unless the run sets one
register("zorba-all", Zorba, planner="all")  # no block activation, budgets ignored: the ablation


def method_class(name: str) -> tuple[type[Method], dict]:
    if name not in REGISTRY:
        raise UserError(f"unknown method {name!r}; choose one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def make_method(name: str, setup: Setup, options: dict | None = None) -> Method:
    cls, defaults = method_class(name)
    method = cls(setup, parse_options(cls, {**defaults, **(options or {})}))
    method.name = name
    return method


__all__ = ["REGISTRY", "Method", "RoundStats", "Setup", "Upload", "make_method", "make_setup", "method_class", "register"]
