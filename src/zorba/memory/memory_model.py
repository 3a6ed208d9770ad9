"""Client memory as an affine function of the activation matrix (docs/theory.md A7).

M_n(A) = base_n + sum_l A[n, l] * delta_l + activation_n

base_n holds what every client keeps whatever it trains (all blocks frozen in low precision, the
runtime, the perturbation buffer); delta_l is the extra cost of making block l trainable; activation_n
is the forward-pass working set for the client's batch and sequence length. The numbers are either
first-principles defaults (`from_block_sizes`) or filled in by calibration from measurements, which
is why the model round-trips through a plain JSON-able dict.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def format_bytes(n_bytes: float) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n_bytes) >= size:
            return f"{n_bytes / size:.1f} {unit}"
    return f"{n_bytes:.0f} B"


@dataclass(frozen=True)
class MemoryModel:
    """base and activation: bytes, one number for all clients or one per client; delta: bytes per block."""

    base: float | np.ndarray
    delta: np.ndarray
    activation: float | np.ndarray = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "delta", np.asarray(self.delta, dtype=float))
        if self.delta.ndim != 1 or np.any(self.delta < 0):
            raise ValueError("delta must be a 1-D array of non-negative bytes per block")

    @property
    def n_blocks(self) -> int:
        return len(self.delta)

    def fixed(self, n_clients: int) -> np.ndarray:
        """(N,) bytes a client needs before it activates any block."""
        return np.broadcast_to(
            np.asarray(self.base, float) + np.asarray(self.activation, float), (n_clients,)
        ).copy()

    def client_memory(self, A: np.ndarray) -> np.ndarray:
        """(N,) bytes per client for activation matrix A (N x L); also works on a batch (..., N, L)."""
        A = np.asarray(A, dtype=float)
        return self.fixed(A.shape[-2]) + A @ self.delta

    def total_memory(self, A: np.ndarray) -> float:
        return float(self.client_memory(A).sum())

    def subset(self, rows: np.ndarray | list[int]) -> MemoryModel:
        """The model restricted to some clients (dropouts: plan only the present ones)."""
        return MemoryModel(_take(self.base, rows), self.delta, _take(self.activation, rows))

    def to_dict(self) -> dict:
        return {
            "base": _plain(self.base),
            "delta": self.delta.tolist(),
            "activation": _plain(self.activation),
        }

    @classmethod
    def from_dict(cls, d: dict) -> MemoryModel:
        return cls(
            _array_or_float(d["base"]),
            np.asarray(d["delta"], float),
            _array_or_float(d.get("activation", 0.0)),
        )

    @classmethod
    def from_block_sizes(
        cls,
        block_sizes: np.ndarray | list[int],
        frozen_bytes: float = 2.0,
        active_bytes: float = 5.0,
        activation_bytes: float | np.ndarray = 0.0,
        runtime_bytes: float | np.ndarray = 0.0,
        z_buffer_params: int = 0,
    ) -> MemoryModel:
        """First-principles default: every block frozen at `frozen_bytes` per parameter (bf16); an
        active block replaces its frozen copy by fp32 weights plus about one byte per parameter that
        promoting it costs the allocator (`active_bytes` = 5: measured 2.73 bytes over bf16 on the
        default model, configs/memory/minilm-sst2-cpu.txt). No restore snapshot: the client's
        round-start weights live in its MasterStore, off the process heap (memory/precision.py).
        A perturbation buffer of `z_buffer_params` fp32 values is counted in base
        as a bound (the largest active tensor is a max, not a sum, so it is not affine in A)."""
        sizes = np.asarray(block_sizes, dtype=float)
        base = frozen_bytes * sizes.sum() + 4.0 * z_buffer_params + np.asarray(runtime_bytes, float)
        return cls(_scalar_if_0d(base), (active_bytes - frozen_bytes) * sizes, activation_bytes)

    def smallest_plan_memory(self, n_clients: int) -> tuple[np.ndarray, int]:
        """(N,) memory of each client's cheapest plan (one block) and that block's index."""
        cheapest = int(np.argmin(self.delta))
        return self.fixed(n_clients) + self.delta[cheapest], cheapest


def _take(x: float | np.ndarray, rows) -> float | np.ndarray:
    arr = np.asarray(x, float)
    return float(arr) if arr.ndim == 0 else arr[np.asarray(rows)]


def _plain(x: float | np.ndarray) -> float | list[float]:
    arr = np.asarray(x, float)
    return float(arr) if arr.ndim == 0 else arr.tolist()


def _array_or_float(x) -> float | np.ndarray:
    return float(x) if np.ndim(x) == 0 else np.asarray(x, float)


def _scalar_if_0d(x: np.ndarray) -> float | np.ndarray:
    return float(x) if np.ndim(x) == 0 else x
