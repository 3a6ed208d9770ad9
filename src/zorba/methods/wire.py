"""What the baselines put on the wire, so byte counts are lengths of real messages: safetensors for
weights, adapters and deltas; a small little-endian struct format for scalar messages."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

_SCALARS = b"ZS1"
SCALAR_HEADER = len(_SCALARS) + struct.calcsize("<III")  # magic + round, client, count
_CATCH_UP = b"ZC1"
CATCH_UP_HEADER = len(_CATCH_UP) + struct.calcsize("<II")  # magic + round, number of entries
CATCH_UP_ENTRY_HEADER = struct.calcsize("<II")  # entry's round, number of scalars


def tensors_to_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    """safetensors serialisation (contiguous CPU copies; safetensors refuses views and shared storage)."""
    return st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()})


def tensors_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    return st_load(data)


def encode_scalars(round_idx: int, client: int, values: Sequence[float]) -> bytes:
    """Client -> server: float32 scalars, one per seed (pool entry or local step)."""
    return _SCALARS + struct.pack(f"<III{len(values)}f", round_idx, client, len(values), *values)


def decode_scalars(data: bytes) -> tuple[int, int, tuple[float, ...]]:
    if data[:3] != _SCALARS:
        raise ValueError("not a scalar message")
    rnd, client, n = struct.unpack_from("<III", data, 3)
    if len(data) != SCALAR_HEADER + 4 * n:
        raise ValueError(f"scalar message of {len(data)} bytes, expected {SCALAR_HEADER + 4 * n}")
    return rnd, client, struct.unpack_from(f"<{n}f", data, SCALAR_HEADER)


def encode_catch_up(round_idx: int, entries: Sequence[tuple[int, Sequence[float]]]) -> bytes:
    """Server -> client: the aggregated scalars of every round the client has not replayed yet."""
    parts = [_CATCH_UP, struct.pack("<II", round_idx, len(entries))]
    for rnd, values in entries:
        parts.append(struct.pack(f"<II{len(values)}f", rnd, len(values), *values))
    return b"".join(parts)
