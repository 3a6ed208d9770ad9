"""FedAvg on the label head alone, by backprop: the first-order counterpart of zorba's `head` planner.

A client computes the features of the same pool a zorba head client draws (federation/client.py), once a
round, with the body frozen in the run's `precision`; then it takes `head_steps` SGD (or Adam) steps on the
same batches of that pool, each a gradient of the offsets through the class logits alone. It uploads the
offsets (safetensors) and the server averages them, as FedAvg does. As a baseline it loads the fp32
checkpoint like the others; in zorba's client format its round needs what the SPSA head's does
(memprobe mode fo-head). Both heads thus differ only in the estimator: the exact gradient
against zorba's one SPSA scalar a step."""

from __future__ import annotations

from typing import Literal

from zorba.core.label_head import attach_label_head, label_head_of
from zorba.federation.client import gradient_head_steps, head_pool, pool_features
from zorba.methods.base import BaselineOptions, Method, Setup, Upload
from zorba.methods.fedavg import FedAvg, frozen_to_bf16
from zorba.methods.wire import tensors_to_bytes
from zorba.wire.protocol import round_seed


class FedAvgHeadOptions(BaselineOptions):
    optimizer: Literal["sgd", "adam"] = "sgd"


class FedAvgHead(FedAvg):
    family = "fedavg"
    first_order = True
    Options = FedAvgHeadOptions

    def __init__(self, setup: Setup, options: FedAvgHeadOptions) -> None:
        Method.__init__(self, setup, options)
        self.model = attach_label_head(setup.lm, setup.task.num_labels).model
        self.model.requires_grad_(False)
        label_head_of(self.model).offset.requires_grad_(True)
        if self.cfg.precision != "fp32":
            frozen_to_bf16(self.model)
        self.global_state = None

    @property
    def frozen_precision(self) -> str:
        return "fp32" if self.cfg.precision == "fp32" else "bf16"

    def client_update(self, cid: int, round_idx: int) -> Upload:
        cfg, setup = self.cfg, self.setup
        seed = round_seed(cfg.seed, round_idx)
        pool = head_pool(setup.parts[cid], cfg.head_pool, seed, cid)
        feats, labels = pool_features(setup.scorer, setup.train, pool, cfg.batch_size)
        params = self.trainable()
        losses = gradient_head_steps(setup.scorer, feats, labels, self._optimizer(list(params.values())),
                                     cfg.head_steps or cfg.local_steps, cfg.batch_size, seed, cid)
        forwards = -(-len(pool) // cfg.batch_size)  # the pool's forwards; the steps run no model pass
        return Upload(tensors_to_bytes(params), sum(losses) / len(losses), forward=forwards, backward=0)
