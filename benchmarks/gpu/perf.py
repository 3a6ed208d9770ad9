"""Performance and memory checks on a lent GPU (H100/H200); prints one JSON object. < 3 minutes.

  python benchmarks/gpu/perf.py --device cuda

- golden hash of z computed on the GPU vs the CPU value (bit-exact replay across device kinds);
- the fused Triton generator (rng_triton.py) on the GPU against the CPU torch path, bit for bit;
- ZO step time / (2 x forward time), all blocks active, MiniLM and an OPT-125m-sized random model,
  with the fused generator and with the torch-op generator side by side (ZORBA_FUSED_RNG);
- peak accelerator memory (max_memory_allocated, fresh process each, run concurrently) of the ZO
  client with all blocks (fp32) and with a quarter of the blocks (bf16- and int8-frozen), first-order Adam
  FedAvg and fp32 inference, on the same batch;
- replay of one (seed, scalar) on a block / torch normal_ and uniform_ fills of the same size, and
  per pair when a round's 40 pairs are replayed together (fused: one launch, one pass over memory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import _common as C  # noqa: E402
import torch  # noqa: E402

from zorba.core import rng  # noqa: E402
from zorba.core.replica import Replica  # noqa: E402
from zorba.core.zo import spsa_step  # noqa: E402
from zorba.federation.memprobe import MemoryProbe, measure  # noqa: E402
from zorba.wire.keys import derive_key
from zorba.wire.protocol import ClientUpdate, LogEntry, StepReport  # noqa: E402

GOLDEN_RADEMACHER = "6c9f090c840e5e7ab86abc0d318f80d0d8a6ad5a4495957891714d4208979f36"  # tests/test_rng.py


def golden(device: str) -> dict:
    big = 1 << 24  # also exercises several generation chunks on the device
    on_dev, on_cpu = rng.noise(big, 99, device=device).cpu(), rng.noise(big, 99)
    return {"gpu": rng.golden_digest(device=device), "cpu": rng.golden_digest(), "expected": GOLDEN_RADEMACHER,
            "match": rng.golden_digest(device=device) == GOLDEN_RADEMACHER, "16M_elements_equal": bool(torch.equal(on_dev, on_cpu))}


def generator(fused: bool, fn):
    """fn with the fused Triton generator on or off (rng.py reads ZORBA_FUSED_RNG on every call)."""

    def run():
        os.environ["ZORBA_FUSED_RNG"] = "1" if fused else "0"
        try:
            return fn()
        finally:
            os.environ.pop("ZORBA_FUSED_RNG", None)

    return run


def fused_checks(device: str) -> dict:
    """Fused kernel on the GPU vs the torch path on the CPU: one pass, and 40-pair sequences with
    stream offsets (a chunked replay); bf16 vs torch's own CUDA add_."""
    from zorba.core import rng_triton

    g = torch.Generator().manual_seed(0)
    sizes = (1, 33, 70_001, 3_000_017)
    cpu = [torch.randn(n, generator=g) for n in sizes]
    keys = [derive_key(9, i) for i in range(len(sizes))]
    scales = [1e-3, -2e-3, 5e-4, 3e-3]
    ref = [t.clone() for t in cpu]
    rng.add_noise_many_(ref, keys, scales)
    dev = [t.to(device) for t in cpu]
    launches = rng_triton.launches
    rng.add_noise_many_(dev, keys, scales)
    out = {"fused_used": rng_triton.launches > launches,
           "one_pass_equal": all(torch.equal(a, b.cpu()) for a, b in zip(ref, dev, strict=True))}
    seq_keys = [[derive_key(p, t) for p in range(40)] for t in range(len(sizes))]
    seq_scales = [[1e-4 * (p - 20) for p in range(40)] for _ in sizes]
    offsets = [0, 0, 32, 1 << 15]
    for t, ks, ss, off in zip(ref, seq_keys, seq_scales, offsets, strict=True):
        for k, s in zip(ks, ss, strict=True):
            if s:
                rng.add_noise_(t, k, s, offset=32 * off)
    rng.add_noise_sequences_(dev, seq_keys, seq_scales, word_offsets=offsets)
    out["sequences_equal"] = all(torch.equal(a, b.cpu()) for a, b in zip(ref, dev, strict=True))
    w = torch.randn(70_001, generator=g).to(device, torch.bfloat16)
    mine, theirs = w.clone(), w.clone()
    rng.add_noise_many_([mine], [5], [1e-2])
    generator(False, lambda: rng.add_noise_many_([theirs], [5], [1e-2]))()
    out["bf16_equal_to_torch_cuda"] = bool(torch.equal(mine, theirs))
    return out


def step_and_replay(name: str, device: str, reps: int) -> dict:
    lm = C.load(name, device)
    scorer, ids, labels = C.batch(lm)
    rep = Replica(lm)
    blocks = list(range(rep.num_blocks))

    def loss() -> float:
        return scorer.loss(ids, labels)

    def step() -> None:
        spsa_step(loss, rep.tensors, blocks, 1, 1e-3, 0.0)

    t = C.best_of({"forward": loss, "step_fused": generator(True, step), "step_torch": generator(False, step),
                   "step_cache_z": generator(False, lambda: spsa_step(loss, rep.tensors, blocks, 1, 1e-3, 0.0,
                                                                      cache_z=True))}, reps, device)
    b = 1
    one = LogEntry(0, 1e-6, 1, "rademacher", (ClientUpdate(0, (b,), (StepReport(7, (0.5,)),)),))
    steps = tuple(StepReport(s, (0.5,)) for s in range(5))
    round_ = LogEntry(0, 1e-6, 1, "rademacher", tuple(ClientUpdate(c, (b,), steps) for c in range(8)))
    fill = torch.empty(lm.blocks[b].numel, device=device)
    r = C.best_of({"replay_fused": generator(True, lambda: rep.apply(one)),
                   "replay_torch": generator(False, lambda: rep.apply(one)),
                   "round_fused": generator(True, lambda: rep.apply(round_)),
                   "round_torch": generator(False, lambda: rep.apply(round_)),
                   "normal_": fill.normal_, "uniform_": fill.uniform_}, reps, device)
    two_fwd = 2 * t["forward"]
    return {"forward_s": t["forward"], "step_ratio": t["step_fused"] / two_fwd,
            "step_ratio_torch_ops": t["step_torch"] / two_fwd, "step_ratio_cache_z": t["step_cache_z"] / two_fwd,
            "replay_block": lm.blocks[b].name, "replay_block_numel": lm.blocks[b].numel,
            "normal_s": r["normal_"], "replay_over_normal": r["replay_fused"] / r["normal_"],
            "replay_over_normal_torch_ops": r["replay_torch"] / r["normal_"],
            "replay_over_uniform": r["replay_fused"] / r["uniform_"],
            "round40_per_pair_over_normal": r["round_fused"] / 40 / r["normal_"],
            "round40_per_pair_over_normal_torch_ops": r["round_torch"] / 40 / r["normal_"]}


def profile_step(name: str, device: str, rows: int = 25) -> dict:
    """Where a fused ZO step's time goes (torch profiler, CPU and CUDA self time per op): the GPU step
    is 1.2 x two forwards, and the host work between launches is the suspect (docs/performance.md)."""
    from torch.profiler import ProfilerActivity, profile

    lm = C.load(name, device)
    scorer, ids, labels = C.batch(lm)
    rep = Replica(lm)
    blocks = list(range(rep.num_blocks))

    def step() -> None:
        spsa_step(lambda: scorer.loss(ids, labels), rep.tensors, blocks, 1, 1e-3, 0.0)

    for _ in range(3):
        step()
    C.sync(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        C.sync(device)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return {"self_cpu_top": table.splitlines()}


def memory(name: str, device: str) -> dict:
    from bench_memory import quarter_blocks

    from zorba.federation.memprobe import load_probe_model

    spec = C.MODELS[name]
    L = len(load_probe_model(spec).blocks)
    every = tuple(range(L))
    probes = {
        "inference_fp32": MemoryProbe(spec, "sst2", every, 16, 64, 2, device, C.DATA, "fp32", "inference"),
        "adam_fedavg": MemoryProbe(spec, "sst2", every, 16, 64, 2, device, C.DATA, "fp32", "adam"),
        "zo_fp32_all": MemoryProbe(spec, "sst2", every, 16, 64, 2, device, C.DATA, "fp32"),
        "zo_bf16_quarter": MemoryProbe(spec, "sst2", quarter_blocks(L), 16, 64, 2, device, C.DATA, "bf16"),
        "zo_int8_quarter": MemoryProbe(spec, "sst2", quarter_blocks(L), 16, 64, 2, device, C.DATA, "int8"),
    }
    with ThreadPoolExecutor(len(probes)) as pool:
        got = dict(zip(probes, pool.map(lambda p: measure(p, timeout=150), probes.values()), strict=True))
    mib = {k: v["peak_cuda_bytes"] / 2**20 for k, v in got.items()}
    return {"peak_mib": mib, "zo_all_over_inference": mib["zo_fp32_all"] / mib["inference_fp32"],
            "zo_bf16_quarter_over_inference": mib["zo_bf16_quarter"] / mib["inference_fp32"],
            "zo_bf16_quarter_reduction_vs_adam": 1 - mib["zo_bf16_quarter"] / mib["adam_fedavg"],
            "zo_int8_quarter_reduction_vs_adam": 1 - mib["zo_int8_quarter"] / mib["adam_fedavg"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--models", default="minilm,opt125m")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--skip-memory", action="store_true", help="speed and bit-equality only")
    ap.add_argument("--profile", action="store_true", help="also profile a fused step (torch profiler)")
    args = ap.parse_args()
    start = time.perf_counter()
    out = {"device": torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device,
           "golden": golden(args.device), "fused": _guarded(fused_checks, args.device), "models": {}}
    for name in args.models.split(","):
        out["models"][name] = _guarded(step_and_replay, name, args.device, args.reps)
        if args.profile:
            out["models"][name]["profile"] = _guarded(profile_step, name, args.device)
        if not args.skip_memory:
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
