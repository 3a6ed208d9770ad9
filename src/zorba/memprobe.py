"""Measure a client's peak memory in a fresh process: load the model, run one local round on the
given blocks, report peak RSS (CPU) or torch.cuda.max_memory_allocated (GPU).

"Client memory" on CPU = peak resident set of the whole client process (runtime + weights +
snapshot + activations); we also report the runtime's own RSS before the model is loaded, so the
part that depends on the plan is visible. On a GPU it is the accelerator's peak allocation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass


@dataclass
class MemoryProbe:
    model: str
    task: str
    blocks: tuple[int, ...]
    batch_size: int
    max_len: int
    local_steps: int = 1
    device: str = "cpu"
    data_dir: str | None = None


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _probe(p: MemoryProbe) -> dict:
    import torch

    from zorba.client import ClientState, TokenizedData, run_round
    from zorba.config import find_data_dir, make_config
    from zorba.models import load_model
    from zorba.protocol import Hyper, RoundPlan
    from zorba.replica import Replica
    from zorba.scoring import Scorer
    from zorba.tasks import get_task, read_examples

    runtime = _rss_bytes("VmRSS")
    task = get_task(p.task)
    cfg = make_config(task=p.task, data_dir=p.data_dir)
    examples = read_examples(find_data_dir(cfg) / p.task / "dev.tsv", task)[: p.batch_size * 4]
    lm = load_model(p.model)
    lm.model.to(p.device)
    scorer = Scorer(lm, task, p.max_len)
    data = TokenizedData(scorer.encode(examples), [e.label for e in examples])
    loaded = _rss_bytes("VmRSS")
    if p.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    plan = RoundPlan(0, 0, tuple(p.blocks), 1, Hyper(1e-6, 1e-3, 1, p.local_steps, p.batch_size))
    run_round(plan, ClientState(0, __import__("numpy").arange(len(examples))), Replica(lm), scorer, data)
    out = {"runtime_rss_bytes": runtime, "loaded_rss_bytes": loaded, "peak_rss_bytes": _rss_bytes("VmHWM")}
    if p.device.startswith("cuda"):
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return out


def measure(p: MemoryProbe, timeout: float = 600) -> dict:
    """Run the probe in a fresh interpreter so no other client's or the server's memory is counted."""
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "zorba.memprobe", json.dumps(asdict(p))],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    args["blocks"] = tuple(args["blocks"])
    print(json.dumps(_probe(MemoryProbe(**args))))
