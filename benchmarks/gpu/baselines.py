"""GPU version of benchmarks/bench_memory_models.py: peak torch.cuda.max_memory_allocated of ZorBA's
client at several activation levels vs the baselines' clients (FedAvg Adam / SGD / LoRA, ZO all
blocks), random-weight OPT-125m and OPT-350m, one fresh process per number. Runs in about 2 minutes
on one GPU; prints one JSON object.

Usage: python benchmarks/gpu/baselines.py --device cuda [--sizes 125m,350m] [--batch-size 8] [--max-len 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import bench_memory_models as B  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--sizes", default="125m,350m")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="zorba-opt-gpu-"))
    results = {}
    for size in args.sizes.split(","):
        path = B.build_opt(size, root / f"opt-{size}")
        results[size] = B.measure_model(path, B.OPT_SIZES[size]["num_hidden_layers"], args)
    key = B.peak_key(args.device)
    summary = {
        "device": args.device, "batch_size": args.batch_size, "max_len": args.max_len, "metric": key,
        "peak_mib": {size: {r["method"]: (round(r[key] / 2**20, 1) if key in r else r.get("error")) for r in rows}
                     for size, rows in results.items()},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
