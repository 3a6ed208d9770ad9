"""Target A5 (docs/performance.md): the in-process runner simulates 1,000 clients with memory that does
not grow per client. Each client count runs in a fresh process (tiny model, one round, one local
step); the peak RSS of each is printed, and last the growth per client between 10 and 1,000.

Usage: python benchmarks/bench_clients.py [--counts 10,100,1000] [--model random:bert-tiny]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import _common as C


def child(n_clients: int, model: str, rounds: int) -> dict:
    import time

    from zorba.federation.config import make_config
    from zorba.federation.memprobe import _status_bytes, load_probe_model
    from zorba.federation.runner import Runner, check_inputs

    cfg = make_config(model=model, clients=n_clients, rounds=rounds, local_steps=1, batch_size=4, max_len=16,
                      train_size=max(4 * n_clients, 400), alpha=1000.0, planner="round-robin", eval_every=1000,
                      measure_memory=False, data_dir=C.DATA)
    runner = Runner(cfg, check_inputs(cfg), load_probe_model(model))
    before = _status_bytes("VmRSS")
    start = time.perf_counter()
    state = runner.run()
    return {"clients": n_clients, "rounds": rounds, "seconds": time.perf_counter() - start,
            "rss_before_rounds_mib": before / 2**20, "peak_rss_mib": _status_bytes("VmHWM") / 2**20,
            "rss_after_mib": _status_bytes("VmRSS") / 2**20, "log_entries": len(state.server.log),
            "in_sync": state.device.digest() == state.server.replica.digest()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--counts", default="10,100,1000")
    ap.add_argument("--model", default="random:bert-tiny")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", type=int, default=0)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model, args.rounds)))
        return
    rows = []
    for n in (int(c) for c in args.counts.split(",")):
        proc = subprocess.run([sys.executable, __file__, "--child", str(n), "--model", args.model,
                               "--rounds", str(args.rounds)], capture_output=True, text=True,
                              env=dict(os.environ, HF_HUB_OFFLINE="1"), timeout=3000)
        if proc.returncode:
            raise SystemExit(proc.stderr[-2000:])
        rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]))
    lo, hi = rows[0], rows[-1]
    growth = (hi["peak_rss_mib"] - lo["peak_rss_mib"]) * 2**20 / max(hi["clients"] - lo["clients"], 1)
    print(f"A5 peak RSS growth per client {lo['clients']}->{hi['clients']}: {growth / 1024:.1f} KiB/client "
          f"({lo['peak_rss_mib']:.0f} -> {hi['peak_rss_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
