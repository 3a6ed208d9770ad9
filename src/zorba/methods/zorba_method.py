"""ZorBA, wrapped (not reimplemented): zorba.federation.runner.Runner with the run's planner (by default
RunConfig's) or the one the options name, e.g. "all" for the budget-blind ablation. Bytes are the real codec message
lengths the runner counts; evaluation is the runner's (dev, and the validation split it holds out)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from zorba.core.scoring import Evaluation
from zorba.federation.config import Planner, make_config
from zorba.federation.runner import Runner
from zorba.methods.base import Method, RoundStats, Setup, Upload


class ZorbaOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    planner: Planner | None = None  # None: the run's (RunConfig's default unless the bench's [run] sets one)


class Zorba(Method):
    family = "zorba"
    Options = ZorbaOptions

    def __init__(self, setup: Setup, options: ZorbaOptions) -> None:
        super().__init__(setup, options)
        # through make_config, so an options planner meets every RunConfig rule (e.g. the memory cap's)
        cfg = setup.cfg if options.planner is None else make_config(**{**setup.cfg.model_dump(), "planner": options.planner})
        self.runner = Runner(cfg, setup.inputs, setup.lm)
        self.cfg = cfg

    @property
    def frozen_precision(self) -> str:
        return self.cfg.precision

    def exclude(self, clients: frozenset[int]) -> None:
        self.runner.excluded = clients

    def client_update(self, cid: int, round_idx: int) -> Upload:
        raise TypeError("ZorBA clients run inside zorba.federation.runner (run_round); there is no separate client update")

    def run_round(self, round_idx: int, clients: list[int]) -> RoundStats:
        # The runner draws the same participants (zorba.federation.runner.participants, minus runner.excluded) as
        # the engine hands the other methods.
        rec = self.runner.run_round()
        self.runner.state.history.append(rec)
        n = rec["clients"]
        per_client = 2 * self.cfg.q * self.cfg.local_steps
        extra = {"blocks": rec["blocks"]}
        return RoundStats(
            rec["train_loss"], [round(rec["uplink_bytes_per_client"])] * n, [round(rec["downlink_bytes_per_client"])] * n,
            forward=per_client * n, backward=0, extra=extra, client_seconds=rec["client_seconds"],
        )

    def idle_round(self, round_idx: int) -> RoundStats:
        # The runner logs the empty round, so its round counter (and every seed derived from it) stays
        # in step with the other methods'.
        return self.run_round(round_idx, [])

    def evaluate(self) -> dict[str, Evaluation]:
        r = self.runner
        out = {"dev": r.eval_scorer.evaluate(*r.dev)}
        if r.validation is not None:
            out["validation"] = r.eval_scorer.evaluate(*r.validation)
        return out
