"""The fused Triton generator (rng_triton.py) against the torch path, bit for bit, on CPU through
Triton's interpreter. The same kernel is compiled for the GPU by benchmarks/gpu/perf.py, which
repeats the comparison there."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is a dev dependency on Linux x86-64 (pyproject.toml)")

SCRIPT = Path(__file__).parent / "fused" / "check_fused.py"


def test_fused_kernel_matches_torch_path_bit_for_bit(tiny_models):
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    env.pop("ZORBA_FUSED_RNG", None)
    out = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_models["opt"])], env=env, capture_output=True, text=True, timeout=300
    )
    print(out.stdout, out.stderr[-3000:])
    assert out.returncode == 0, out.stdout + out.stderr[-3000:]
    assert out.stdout.count(": ok") == 8 and "MISMATCH" not in out.stdout
