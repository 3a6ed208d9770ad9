"""How a run copes with unreliable clients: the options (dropouts, per-round deadline, clipping,
robust aggregation) and the seeded dropout simulation of the in-process runner.

Dropouts: each round, each participant is offline with probability `dropout`, drawn from
(run seed, round, client), so a resumed run sees the same dropouts. The server plans only for the
clients present; an absent client catches up by replay when it is next planned.
Deadline: a client whose report arrives more than `deadline` seconds after its plan is left out of
the round (a straggler). In-process, a client's arrival time is its measured compute time divided by
its profile's relative speed; wall-clock times are not reproducible, so neither is a run that hits the
deadline (the log still records exactly who was counted, so resume and verify stay exact)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from zorba.errors import UserError
from zorba.federation.robust import RobustPolicy
from zorba.wire.keys import derive_key

_DROPOUT_TAG = 13


class Reliability(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    deadline: float | None = Field(None, gt=0.0, le=1e7)  # seconds per round; None = wait for everyone
    clip: float = Field(10.0, ge=0.0, le=1e9)  # multiple of the running median |g|; 0 = no clipping
    aggregate: Literal["screened", "mean", "trimmed", "median"] = "screened"
    trim: float = Field(0.1, ge=0.0, lt=0.5)
    outlier: float = Field(3.0, gt=1.0, le=1e6)  # `screened`: drop above this multiple of the block's low median

    def robust_policy(self) -> RobustPolicy:
        return RobustPolicy(clip=self.clip, aggregate=self.aggregate, trim=self.trim, outlier=self.outlier)


def make_reliability(**values) -> Reliability:
    """Build Reliability options; an invalid value becomes one UserError line naming the option."""
    try:
        return Reliability(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "reliability"
        raise UserError(f"invalid option {where}: {err['msg']} (got {err.get('input')!r})") from None


def online(clients: Sequence[int], seed: int, round_idx: int, dropout: float) -> list[int]:
    """The clients that are present this round (each absent with probability `dropout`)."""
    if dropout <= 0.0 or not clients:
        return list(clients)
    draws = np.random.default_rng(derive_key(seed, _DROPOUT_TAG, round_idx)).random(max(clients) + 1)
    return [c for c in clients if draws[c] >= dropout]


def is_late(compute_seconds: float, speed: float, deadline: float | None) -> bool:
    """Whether a client of relative `speed` that computed for `compute_seconds` misses the deadline."""
    return deadline is not None and compute_seconds / speed > deadline
