"""Peak client memory of a baseline method, measured in a fresh process and the same way zorba.federation.memprobe
measures ZorBA's clients: load the model, build the method's client side, reset the high-water mark,
run ONE client_update (one round: the configured local steps, batch and length), report the training peak
RSS (VmHWM since the reset; on a GPU torch.cuda.max_memory_allocated) and the process's peak from
start, loading included (`process_peak_rss_bytes`: what the benchmark compares).

The probe builds no partition and no server state, so what it measures is what a client holds: the
model, plus per method gradients and optimiser moments (first order), adapters (LoRA), FedZO's copy
of the global weights (its upload is a dense delta), activations, and the serialised upload."""

from __future__ import annotations

import json
import os
import subprocess
import sys

_PROBE_EXAMPLES = 4  # batches' worth of examples the probe client holds


def _probe(name: str, options: dict, cfg_values: dict, device: str) -> dict:
    import numpy as np
    import torch
    import transformers.modeling_utils  # noqa: F401 - library code is runtime, as in zorba.federation.memprobe

    from zorba.core.scoring import Scorer
    from zorba.core.tasks import get_task, read_examples
    from zorba.federation.client import TokenizedData
    from zorba.federation.config import RunConfig, find_data_dir
    from zorba.federation.memprobe import _status_bytes, load_probe_model, reset_peak_rss
    from zorba.federation.runner import Inputs
    from zorba.methods import make_method
    from zorba.methods.base import Setup

    runtime = _status_bytes("VmRSS")
    cfg = RunConfig(**{**cfg_values, "clients": 1, "participation": 1.0})
    task = get_task(cfg.task)
    examples = read_examples(find_data_dir(cfg) / cfg.task / "dev.tsv", task)[: cfg.batch_size * _PROBE_EXAMPLES]
    lm = load_probe_model(cfg.model)
    lm.model.to(device)
    scorer = Scorer(lm, task, cfg.max_len)
    data = TokenizedData(scorer.encode(examples), [e.label for e in examples])
    setup = Setup(cfg, Inputs(examples, examples, None), lm, task, scorer, data, (data.ids, data.labels),
                  [np.arange(len(examples))])
    method = make_method(name, setup, options)
    load_peak = _status_bytes("VmHWM")
    reset_ok = reset_peak_rss()
    ready = _status_bytes("VmRSS")
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ready_cuda = torch.cuda.memory_allocated()
    upload = method.client_update(0, 0)
    out = {"runtime_rss_bytes": runtime, "load_peak_rss_bytes": load_peak, "ready_rss_bytes": ready,
           "peak_rss_bytes": _status_bytes("VmHWM"), "peak_reset": reset_ok, "upload_bytes": len(upload.data),
           "process_peak_rss_bytes": max(load_peak, _status_bytes("VmHWM")),
           "params": sum(b.numel for b in lm.blocks)}
    if device.startswith("cuda"):
        out["ready_cuda_bytes"] = ready_cuda
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return out


def measure(name: str, options: dict, cfg_values: dict, device: str = "cpu", timeout: float = 900) -> dict:
    """Run the probe in a fresh interpreter so no server, evaluation or other client memory counts."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    args = json.dumps({"name": name, "options": options, "cfg": cfg_values, "device": device})
    proc = subprocess.run([sys.executable, "-m", "zorba.methods.probe", args],
                          capture_output=True, text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe for {name} failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_client(name: str, options: dict, cfg) -> dict:
    """Probe the client of method `name` with `options` under RunConfig `cfg` (its model, task, batch
    and length); the data folder is resolved here, so the fresh process finds what this one does."""
    from zorba.federation.config import find_data_dir

    return measure(name, options, {**cfg.model_dump(mode="json"), "data_dir": str(find_data_dir(cfg))})


if __name__ == "__main__":
    a = json.loads(sys.argv[1])
    print(json.dumps(_probe(a["name"], a["options"], a["cfg"], a["device"])))
