"""Stream keys: every seed of a run (round, client, step, tensor) is a 64-bit key hashed from a tuple
of ints. The protocol decides who gets which key and the generator (zorba.core.rng) turns a key into
z, so the hash lives here, below both, with the names of the perturbation distributions the wire
carries."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from functools import lru_cache

DISTRIBUTIONS = ("rademacher", "gaussian")


def derive_key(*ids: int) -> int:
    """A 64-bit stream key from a tuple of non-negative ints (seed, round, client, ...)."""
    packed = struct.pack(f"<{len(ids)}Q", *[i & 0xFFFFFFFFFFFFFFFF for i in ids])
    return int.from_bytes(hashlib.blake2b(packed, digest_size=8).digest(), "little")


def derive_keys(prefix: Sequence[int], suffixes: Iterable[Sequence[int]]) -> list[int]:
    """[derive_key(*prefix, *s) for s in suffixes], hashing the shared prefix once: a ZO step derives
    one key per active tensor, and on a tiny model that was a third of its non-forward time. The
    digests are joined and read as integers in one call (a call per key was a third of the rest)."""
    head = hashlib.blake2b(struct.pack(f"<{len(prefix)}Q", *[i & 0xFFFFFFFFFFFFFFFF for i in prefix]), digest_size=8)
    copy, pair, digests = head.copy, _u64s(2).pack, []
    for s in suffixes:  # suffixes are small indices (block, tensor): no masking needed
        h = copy()
        h.update(pair(*s) if len(s) == 2 else _u64s(len(s)).pack(*s))
        digests.append(h.digest())
    return list(struct.unpack(f"<{len(digests)}Q", b"".join(digests)))


@lru_cache(maxsize=8)
def _u64s(n: int) -> struct.Struct:
    return struct.Struct(f"<{n}Q")
