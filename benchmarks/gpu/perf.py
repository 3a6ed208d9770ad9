"""Performance and memory checks on a lent GPU (H100/H200); prints one JSON object. < 3 minutes.

  python benchmarks/gpu/perf.py --device cuda

- golden hash of z computed on the GPU vs the CPU value (bit-exact replay across device kinds);
- ZO step time / (2 x forward time), all blocks active, MiniLM and an OPT-125m-sized random model;
- peak accelerator memory (max_memory_allocated, fresh process each, run concurrently) of the ZO
  client with all blocks (fp32) and with a quarter of the blocks (bf16-frozen), first-order Adam
  FedAvg and fp32 inference, on the same batch;
- replay of one (seed, scalar) on a block / torch normal_ and uniform_ fills of the same size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as C  # noqa: E402
import torch  # noqa: E402

from zorba import rng  # noqa: E402
from zorba.memprobe import MemoryProbe, measure  # noqa: E402
from zorba.protocol import ClientUpdate, LogEntry, StepReport  # noqa: E402
from zorba.replica import Replica  # noqa: E402
from zorba.zo import spsa_step  # noqa: E402

GOLDEN_RADEMACHER = "6c9f090c840e5e7ab86abc0d318f80d0d8a6ad5a4495957891714d4208979f36"  # tests/test_rng.py


def golden(device: str) -> dict:
    big = 1 << 24  # also exercises several generation chunks on the device
    on_dev, on_cpu = rng.noise(big, 99, device=device).cpu(), rng.noise(big, 99)
    return {"gpu": rng.golden_digest(device=device), "cpu": rng.golden_digest(), "expected": GOLDEN_RADEMACHER,
            "match": rng.golden_digest(device=device) == GOLDEN_RADEMACHER, "16M_elements_equal": bool(torch.equal(on_dev, on_cpu))}


def step_and_replay(name: str, device: str, reps: int) -> dict:
    lm = C.load(name, device)
    scorer, ids, labels = C.batch(lm)
    rep = Replica(lm)
    blocks = list(range(rep.num_blocks))

    def loss() -> float:
        return scorer.loss(ids, labels)

    t = C.best_of({"forward": loss, "step": lambda: spsa_step(loss, rep.tensors, blocks, 1, 1e-3, 0.0),
                   "step_cache_z": lambda: spsa_step(loss, rep.tensors, blocks, 1, 1e-3, 0.0, cache_z=True)},
                  reps, device)
    b = 1
    entry = LogEntry(0, 1e-6, 1, "rademacher", (ClientUpdate(0, (b,), (StepReport(7, (0.5,)),)),))
    fill = torch.empty(lm.blocks[b].numel, device=device)
    r = C.best_of({"replay": lambda: rep.apply(entry), "normal_": fill.normal_, "uniform_": fill.uniform_}, reps, device)
    return {"forward_s": t["forward"], "step_ratio": t["step"] / (2 * t["forward"]),
            "step_ratio_cache_z": t["step_cache_z"] / (2 * t["forward"]), "replay_block": lm.blocks[b].name,
            "replay_over_normal": r["replay"] / r["normal_"], "replay_over_uniform": r["replay"] / r["uniform_"]}


def memory(name: str, device: str) -> dict:
    from bench_memory import quarter_blocks

    from zorba.memprobe import load_probe_model

    spec = C.MODELS[name]
    L = len(load_probe_model(spec).blocks)
    every = tuple(range(L))
    probes = {
        "inference_fp32": MemoryProbe(spec, "sst2", every, 16, 64, 2, device, C.DATA, "fp32", "inference"),
        "adam_fedavg": MemoryProbe(spec, "sst2", every, 16, 64, 2, device, C.DATA, "fp32", "adam"),
        "zo_fp32_all": MemoryProbe(spec, "sst2", every, 16, 64, 2, device, C.DATA, "fp32"),
        "zo_bf16_quarter": MemoryProbe(spec, "sst2", quarter_blocks(L), 16, 64, 2, device, C.DATA, "bf16"),
    }
    with ThreadPoolExecutor(len(probes)) as pool:
        got = dict(zip(probes, pool.map(lambda p: measure(p, timeout=150), probes.values()), strict=True))
    mib = {k: v["peak_cuda_bytes"] / 2**20 for k, v in got.items()}
    return {"peak_mib": mib, "zo_all_over_inference": mib["zo_fp32_all"] / mib["inference_fp32"],
            "zo_bf16_quarter_over_inference": mib["zo_bf16_quarter"] / mib["inference_fp32"],
            "zo_bf16_quarter_reduction_vs_adam": 1 - mib["zo_bf16_quarter"] / mib["adam_fedavg"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="minilm,opt125m")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    start = time.perf_counter()
    out = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
           "golden": golden(args.device), "models": {}}
    for name in args.models.split(","):
        out["models"][name] = _guarded(step_and_replay, name, args.device, args.reps)
        out["models"][name]["memory"] = _guarded(memory, name, args.device)
        print(json.dumps(out), flush=True)  # partial results survive a later failure or timeout
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))


def _guarded(fn, *args) -> dict:
    """One failing measurement is recorded, not fatal: a device lease is too short to rerun."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001
        return {"error": f"{type(exc).__name__}: {exc}"[:500]}


if __name__ == "__main__":
    main()
