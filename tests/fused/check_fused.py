"""Run with TRITON_INTERPRET=1 (tests/test_rng_fused.py does): Triton's CPU interpreter executes the
fused GPU kernel on CPU tensors, and every result is compared with rng.py's torch path bit for bit.
Prints one line per check; exits non-zero on the first mismatch."""

from __future__ import annotations

import os
import sys

import torch

from zorba.core import rng, rng_triton
from zorba.core.models import load_model
from zorba.core.replica import Replica
from zorba.core.zo import spsa_step
from zorba.memory.precision import TieredReplica
from zorba.wire.keys import derive_key
from zorba.wire.protocol import ClientUpdate, LogEntry

SIZES = (1, 31, 32, 33, 2048, 2049, 70_001)


def torch_path():
    """Context: the fused path off (rng.py's torch ops), restored afterwards."""

    class Off:
        def __enter__(self):
            os.environ["ZORBA_FUSED_RNG"] = "0"

        def __exit__(self, *exc):
            os.environ.pop("ZORBA_FUSED_RNG")

    return Off()


def fused_ran(fn):
    """fn(), and whether it launched the fused kernel."""
    before = rng_triton.launches
    out = fn()
    return out, rng_triton.launches > before


def check(name: str, ok: bool) -> None:
    print(f"{name}: {'ok' if ok else 'MISMATCH'}", flush=True)
    if not ok:
        sys.exit(1)


def one_pass() -> None:
    g = torch.Generator().manual_seed(0)
    ts = [torch.randn(n, generator=g) for n in SIZES]
    keys = [derive_key(3, i) for i in range(len(ts))]
    scales = [1e-3 * (i - 2) for i in range(len(ts))]  # one zero scale: skipped
    fused = [t.clone() for t in ts]
    rng.add_noise_many_(fused, keys, scales)
    with torch_path():
        ref = [t.clone() for t in ts]
        rng.add_noise_many_(ref, keys, scales)
    check("one pass, fp32, 7 sizes", all(torch.equal(a, b) for a, b in zip(fused, ref, strict=True)))
    z = torch.zeros(1000)
    rng.add_noise_many_([z], [20260427], [1.0])
    check("golden z", torch.equal(z, rng.noise(1000, 20260427)))


def sequences() -> None:
    g = torch.Generator().manual_seed(1)
    ts = [torch.randn(n, generator=g) for n in (5000, 40, 4096)]
    keys = [[derive_key(t, p) for p in range(n)] for t, n in enumerate((4, 1, 3))]
    scales = [[1e-3, 0.0, -2.5e-3, 7e-4], [0.5], [1e-2, -1e-2, 3e-5]]
    offsets = [0, 0, 96]  # the third tensor is a chunk starting at element 3072 of its stream
    fused = [t.clone() for t in ts]
    rng.add_noise_sequences_(fused, keys, scales, word_offsets=offsets)
    ref = [t.clone() for t in ts]
    with torch_path():
        for t, ks, ss, off in zip(ref, keys, scales, offsets, strict=True):
            for k, s in zip(ks, ss, strict=True):
                if s:
                    rng.add_noise_(t, k, s, offset=32 * off)
    check("sequences with offsets and zero scales", all(torch.equal(a, b) for a, b in zip(fused, ref, strict=True)))


def low_precision() -> None:
    """bf16 follows torch's CUDA add_: w + s*z in fp32 with s in fp32, rounded once per add."""
    w = torch.randn(3000, generator=torch.Generator().manual_seed(2)).bfloat16()
    keys, scales = [11, 12], [1e-2, -3e-3]
    fused = w.clone()
    rng.add_noise_sequences_([fused], [keys], [scales])
    ref = w.clone()
    for k, s in zip(keys, scales, strict=True):
        ref = (ref.float() + torch.tensor(s, dtype=torch.float32) * rng.noise(3000, k)).bfloat16()
    check("bf16 rounding after every add", torch.equal(fused, ref))


def train_and_replay(model_path: str) -> None:
    """A few SPSA steps on a tiny model, then replay on a plain and a tiered replica: same bits as
    the torch path, end to end."""

    def run() -> tuple[str, str, str]:
        torch.manual_seed(0)
        lm = load_model(model_path)
        rep = Replica(lm)
        ids = torch.randint(0, 100, (2, 8))
        loss = lambda: float(lm.model(input_ids=ids).logits.float().square().mean())  # noqa: E731
        blocks = list(range(rep.num_blocks))
        steps = tuple(spsa_step(loss, rep.tensors, blocks, s, 1e-3, 1e-2, q=2)[0] for s in (5, 6))
        trained = rep.digest()
        entry = LogEntry(0, 1e-2, 2, "rademacher", (ClientUpdate(0, tuple(blocks), steps),))
        plain, tiered = Replica(load_model(model_path)), TieredReplica(load_model(model_path), "bf16", "memory")
        plain.apply(entry)
        tiered.apply(entry)
        return trained, plain.digest(), tiered.digest()

    fused, launched = fused_ran(run)
    with torch_path():
        ref, relaunched = fused_ran(run)
    check("fused kernel used, and only when on", launched and not relaunched)
    check("spsa steps on a tiny OPT", fused[0] == ref[0])
    check("replay on a Replica", fused[1] == ref[1])
    check("replay on a TieredReplica", fused[2] == ref[2])


if __name__ == "__main__":
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1")
    one_pass()
    sequences()
    low_precision()
    train_and_replay(sys.argv[1])
