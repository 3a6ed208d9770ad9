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


def test_fused_kernel_compiles_for_hopper_without_a_gpu():
    """Type errors and lowering failures show up here, not first on a lent GPU: Triton compiles the
    kernel to PTX and a cubin for sm_90 (H100/H200) with its bundled ptxas."""
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from zorba.core import rng_triton

    # Triton 3.6's generated launcher binds the arguments into locals with these names; a kernel
    # argument called `params` is silently replaced by a dict there (found on the first GPU run).
    assert set(rng_triton._rademacher_kernel.arg_names).isdisjoint({"params", "specialization", "options"})
    signature = {"table": "*i64", "prog_tensor": "*i32", "prog_word": "*i32", "pairs": "*i32", "n_pairs": "i32",
                 "DTYPE": "constexpr", "ROUND": "constexpr", "WORDS": "constexpr"}
    for dtype, round_ in ((tl.float32, False), (tl.bfloat16, True)):
        src = ASTSource(fn=rng_triton._rademacher_kernel, signature=signature,
                        constexprs={"DTYPE": dtype, "ROUND": round_, "WORDS": rng_triton._WORDS})
        kernel = triton.compile(src, target=GPUTarget("cuda", 90, 32))
        assert ".entry _rademacher_kernel" in kernel.asm["ptx"]
        assert len(kernel.asm["cubin"]) > 0
