"""FedAvg with first-order (backprop) local training: full-parameter (SGD or Adam) or LoRA adapters
(peft, on every linear module of the transformer layers). Clients upload their trainable tensors as
safetensors; the server averages them (equal client weights, as zorba's server) and sends the average
back. With LoRA only the adapters travel: the frozen base model is already on every client, stored as
the run's `precision` asks of zorba's frozen blocks (bf16 unless fp32)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from zorba.core.blocks import find_layer_list
from zorba.methods.base import BaselineOptions, Method, RoundStats, Setup, Upload
from zorba.methods.grad_loss import loss_with_grad
from zorba.methods.wire import tensors_from_bytes, tensors_to_bytes


class FedAvgOptions(BaselineOptions):
    optimizer: Literal["sgd", "adam"] = "sgd"
    lora: bool = False
    lora_r: int = Field(8, ge=1, le=1024)
    lora_alpha: float = Field(16.0, gt=0)


def lora_targets(model: nn.Module) -> list[str]:
    """Names (last component) of every linear layer inside the transformer layers, any family: BERT's
    query/key/value/dense, OPT's q_proj/.../fc2, GPT-2's Conv1D c_attn/c_proj/c_fc."""
    from transformers.pytorch_utils import Conv1D

    prefix = find_layer_list(model) + "."
    return sorted({
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if name.startswith(prefix) and isinstance(module, nn.Linear | Conv1D)
    })


_LORA_INIT_TAG = 0x10A  # the adapters' initial draw has its own stream key, derived from the run seed


def add_lora(model: nn.Module, r: int, alpha: float, seed: int) -> nn.Module:
    """Inject LoRA adapters in place (the original module now runs base + adapter); returns the PeftModel.
    peft draws the A matrices from torch's global generator: seeded here from the run seed (and the
    caller's generator state left as it was), so a run's adapters, like all its random choices, follow
    its seed."""
    from peft import LoraConfig, get_peft_model

    from zorba.wire.keys import derive_key

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=lora_targets(model))
    with torch.random.fork_rng():
        torch.manual_seed(derive_key(seed, _LORA_INIT_TAG))
        return get_peft_model(model, config)


@torch.no_grad()
def frozen_to_bf16(model: nn.Module) -> None:
    """The frozen base stored in bf16 and computed in fp32, the adapters in fp32: zorba's client format
    (memory/precision.py). A frozen Linear upcasts its weight for its forward and again in backward,
    embeddings cast the rows they return, so no fp32 copy of the base outlives its module; bf16
    matmuls, forward and backward, would run many times slower on a CPU without bf16 units. Only
    Linear and Embedding weights are stored in bf16: a norm's weight must stay fp32 for its backward
    (it is saved as the parameter itself), and the 1-D tensors are a fraction of a percent of the model."""
    from zorba.memory.precision import attach_upcast_hooks

    for module in model.modules():
        if type(module) is nn.Linear or isinstance(module, nn.Embedding):
            for p in module.parameters(recurse=False):
                if not p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
    attach_upcast_hooks(model)


class FedAvg(Method):
    family = "fedavg"
    first_order = True
    Options = FedAvgOptions

    def __init__(self, setup: Setup, options: FedAvgOptions) -> None:
        super().__init__(setup, options)
        self.model = setup.lm.model
        if options.lora:
            self.peft = add_lora(self.model, options.lora_r, options.lora_alpha, self.cfg.seed)
            if self.cfg.precision != "fp32":
                frozen_to_bf16(self.model)
        else:
            self.model.requires_grad_(True)
        self.global_state: dict[str, torch.Tensor] | None = None  # server side, created lazily

    @property
    def frozen_precision(self) -> str:
        # The same option zorba's frozen blocks take; int8 has no peft path here, so LoRA's base is bf16.
        if not self.options.lora:
            return "none frozen"
        return "fp32" if self.cfg.precision == "fp32" else "bf16"

    def trainable(self) -> dict[str, torch.Tensor]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def _optimizer(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        # A fresh optimiser per round: FedAvg clients keep no state between rounds (Adam's moments
        # would otherwise be extra per-client memory and stale after the server averages).
        if self.options.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.cfg.lr)
        return torch.optim.SGD(params, lr=self.cfg.lr)

    def client_update(self, cid: int, round_idx: int) -> Upload:
        params = self.trainable()
        opt = self._optimizer(list(params.values()))
        losses = []
        for k in range(self.cfg.local_steps):
            seqs, labels = self.setup.batch(cid, round_idx, k)
            opt.zero_grad(set_to_none=True)
            loss = loss_with_grad(self.setup.scorer, self.model, seqs, labels)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        opt.zero_grad(set_to_none=True)
        data = tensors_to_bytes(params)
        steps = self.cfg.local_steps
        return Upload(data, sum(losses) / len(losses), forward=steps, backward=steps)

    @torch.no_grad()
    def _load(self, state: dict[str, torch.Tensor]) -> None:
        params = self.trainable()
        for name, value in state.items():
            params[name].copy_(value)

    def run_round(self, round_idx: int, clients: list[int]) -> RoundStats:
        if self.global_state is None:
            self.global_state = {n: p.detach().clone() for n, p in self.trainable().items()}
        down = len(tensors_to_bytes(self.global_state))  # the same message goes to every client
        total = {n: torch.zeros_like(v) for n, v in self.global_state.items()}
        uploads, weights = [], self.client_weights(clients)
        for i, cid in enumerate(clients):
            self._load(self.global_state)
            uploads.append(up := self.train_client(cid, round_idx))
            for name, value in tensors_from_bytes(up.data).items():
                total[name] += value if weights is None else float(weights[i]) * value
        self.global_state = total if weights is not None else {n: v / len(clients) for n, v in total.items()}
        self._load(self.global_state)
        return RoundStats(sum(u.loss for u in uploads) / len(uploads), [len(u.data) for u in uploads],
                          [down] * len(clients), forward=sum(u.forward for u in uploads),
                          backward=sum(u.backward for u in uploads), client_seconds=sum(u.seconds for u in uploads))
