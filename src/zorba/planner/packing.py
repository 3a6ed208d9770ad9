"""Give every required block one holder within the budgets: a bin-packing problem (NP-hard), so a few
first-fit-decreasing passes with different tie rules and jittered orders, first success wins."""

from __future__ import annotations

import numpy as np

_SLACK = 1e-12


def pack_blocks(
    blocks: np.ndarray,
    delta: np.ndarray,
    fits: np.ndarray,
    rooms: np.ndarray,
    seed: int = 0,
    attempts: int = 16,
    jitter_only: bool = False,
) -> np.ndarray | None:
    """holder[l] for each block in `blocks` (a bin index into fits/rooms, -1 elsewhere), or None if
    no attempt packs them. fits: (B, L) which bins may hold which block; rooms: (B,) bytes.
    jitter_only skips the two plain orders (for a restart that should land somewhere new)."""
    rng = np.random.default_rng(seed)
    for attempt in range(2 if jitter_only else 0, attempts):
        jitter = 1.0 if attempt < 2 else rng.uniform(0.7, 1.3, len(blocks))
        order = blocks[np.argsort(-delta[blocks] * jitter, kind="stable")]
        holder = _first_fit(order, delta, fits, rooms, best_fit=attempt % 2 == 1)
        if holder is not None:
            return holder
    return None


def _first_fit(order: np.ndarray, delta: np.ndarray, fits: np.ndarray, rooms: np.ndarray, best_fit: bool):
    """Worst fit (the roomiest bin: spreads load) or best fit (the tightest bin that still fits)."""
    left = rooms.astype(float).copy()
    holder = np.full(fits.shape[1], -1)
    for blk in order:
        ok = fits[:, blk] & (delta[blk] <= left * (1 + _SLACK) + 1e-9)
        if not ok.any():
            return None
        b = int(np.argmin(np.where(ok, left, np.inf)) if best_fit else np.argmax(np.where(ok, left, -np.inf)))
        holder[blk], left[b] = b, left[b] - delta[blk]
    return holder
