"""zorba: federated zeroth-order fine-tuning with heterogeneous block activation."""

import os

# Clients are memory-poor: MKL's own allocator keeps freed matmul buffers for reuse (about 5 MiB
# resident after an OPT-125m forward, 4 MiB more at the peak) at no measurable speed gain here
# (docs/memory.md). MKL reads this once, when torch loads it, so it must be set before torch is
# imported; a user who imports torch first keeps MKL's default. Every memory probe mode runs with it.
os.environ.setdefault("MKL_DISABLE_FAST_MM", "1")

__version__ = "0.1.0"
