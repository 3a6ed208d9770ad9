"""Plans are a pure function of the seed and the inputs: the same config gives the same final weights
whether the machine is idle or busy (no planner decision depends on wall-clock time)."""

import subprocess
import sys

from zorba.core.models import load_model, state_digest
from zorba.experiments.job import build_result
from zorba.federation.config import make_config
from zorba.federation.runner import Runner, check_inputs


def _final_digest(cfg) -> str:
    lm = load_model(cfg.model)
    base = state_digest(lm.model)
    return build_result(cfg, Runner(cfg, check_inputs(cfg), lm).run(), base)["final_model_sha256"]


def test_same_config_same_weights_under_different_load(tiny_models, data_dir):
    cfg = make_config(model=str(tiny_models["bert"]), data_dir=str(data_dir), clients=4, rounds=3, local_steps=2,
                      batch_size=4, max_len=24, train_size=80, eval_every=10, measure_memory=False,
                      precision="fp32", lr=1e-3, planner="zorba")  # the planner that solves a MILP each round
    quiet = _final_digest(cfg)
    burners = [subprocess.Popen([sys.executable, "-c", "import time\nt=time.time()\nwhile time.time()-t<60: pass"])
               for _ in range(3)]
    try:
        busy = _final_digest(cfg)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert quiet == busy
