"""Measured peak client memory on larger random-weight OPT models: ZorBA at several activation levels
against every baseline's client (first-order FedAvg with Adam / SGD / LoRA, ZO on all blocks).

Each number is one fresh process (load the model, reset the high-water mark, one local step), never
an estimate: ZorBA's client through zorba.federation.memprobe (mode "zo", frozen blocks in bf16), the baselines
through zorba.methods.probe. Models are OPTConfig-built (125m / 350m, and 1.3b with --with-1.3b:
about 5 GiB of fp32 weights, 3x that for Adam) with seeded random weights, saved once to a temp folder
with the default model's tokenizer, so both probes load the same checkpoint. Weights being random does
not change memory.

Usage: python benchmarks/bench_memory_models.py [--sizes 125m,350m] [--with-1.3b] [--device cpu]
       [--batch-size 4] [--max-len 32] [--out results.json]
Prints a Markdown table and, last, one JSON line with every measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

OPT_SIZES = {  # the published OPT shapes
    "125m": dict(hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12, word_embed_proj_dim=768),
    "350m": dict(hidden_size=1024, num_hidden_layers=24, ffn_dim=4096, num_attention_heads=16, word_embed_proj_dim=512),
    "1.3b": dict(hidden_size=2048, num_hidden_layers=24, ffn_dim=8192, num_attention_heads=32, word_embed_proj_dim=2048),
}
LEVELS = (0.25, 0.5, 1.0)  # fraction of the transformer layers a ZorBA client activates
BASELINES = {  # label -> (zorba.methods name, options)
    "FedAvg Adam (full)": ("fedavg-adam", {}),
    "FedAvg SGD (full)": ("fedavg-sgd", {}),
    "FedAvg LoRA r=8 (Adam)": ("fedavg-lora", {"lora_r": 8}),
    "ZO all blocks (FedZO/FedKSeed/DeComFL client)": ("decomfl", {}),
}


def find_data() -> str:
    for p in (Path(__file__).resolve(), *Path(__file__).resolve().parents, *Path.cwd().resolve().parents):
        if (p / "shared" / "data" / "sst2" / "train.tsv").is_file():
            return str(p / "shared" / "data")
    raise SystemExit("shared/data not found")


def build_opt(size: str, folder: Path) -> Path:
    """Save a seeded random-weight OPT of the given size with MiniLM's tokenizer (ids < 30522)."""
    import torch
    import transformers as tf

    from zorba.core.models import resolve_source

    if (folder / "config.json").is_file():
        return folder
    torch.manual_seed(0)
    config = tf.OPTConfig(max_position_embeddings=2048, **OPT_SIZES[size])
    model = tf.OPTForCausalLM(config)
    config.architectures = ["OPTForCausalLM"]
    model.save_pretrained(folder)
    tf.AutoTokenizer.from_pretrained(resolve_source("minilm")).save_pretrained(folder)
    del model
    return folder


def in_fresh_process(kind: str, spec: dict, timeout: float) -> dict:
    """Run one probe via this script's --one entry (a fresh interpreter per measurement)."""
    proc = subprocess.run([sys.executable, __file__, "--one", json.dumps({"kind": kind, **spec})],
                          capture_output=True, text=True, timeout=timeout, env=dict(os.environ))
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_one(spec: dict) -> dict:
    if spec["kind"] == "zorba":
        from zorba.federation.memprobe import MemoryProbe, _probe

        return _probe(MemoryProbe(spec["model"], "sst2", tuple(spec["blocks"]), spec["batch_size"], spec["max_len"],
                                  1, spec["device"], spec["data_dir"], "bf16", "zo"))
    from zorba.methods.probe import _probe as baseline_probe

    cfg = dict(model=spec["model"], task="sst2", batch_size=spec["batch_size"], max_len=spec["max_len"],
               data_dir=spec["data_dir"], lr=1e-5)
    return baseline_probe(spec["method"], spec["options"], cfg, spec["device"])


def measure_model(path: Path, n_layers: int, args) -> list[dict]:
    common = dict(model=str(path), batch_size=args.batch_size, max_len=args.max_len, device=args.device,
                  data_dir=find_data())
    rows = []
    for frac in LEVELS:
        k = max(1, round(frac * n_layers))
        blocks = list(range(1, 1 + k))  # layers after the embeddings block
        res = in_fresh_process("zorba", {**common, "blocks": blocks}, args.timeout)
        rows.append({"method": f"ZorBA client, {k}/{n_layers} layers active (bf16 frozen)", **res})
    for label, (name, options) in BASELINES.items():
        res = in_fresh_process("baseline", {**common, "method": name, "options": options}, args.timeout)
        rows.append({"method": label, **res})
    return rows


def peak_key(device: str) -> str:
    return "peak_cuda_bytes" if device.startswith("cuda") else "peak_rss_bytes"


def render(results: dict[str, list[dict]], device: str) -> str:
    key = peak_key(device)
    lines = [f"| model | client | peak ({'GPU allocated' if key == 'peak_cuda_bytes' else 'RSS'}, MiB) | vs FedAvg Adam |",
             "|---|---|---|---|"]
    for size, rows in results.items():
        adam = next((r.get(key) for r in rows if r["method"].startswith("FedAvg Adam")), None)
        for r in rows:
            if key not in r:
                lines.append(f"| OPT-{size} | {r['method']} | failed: {r.get('error')} | |")
                continue
            ratio = f"{100 * (r[key] / adam - 1):+.1f}%" if adam else "-"
            lines.append(f"| OPT-{size} | {r['method']} | {r[key] / 2**20:,.0f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="125m,350m")
    ap.add_argument("--with-1.3b", dest="big", action="store_true", help="add OPT-1.3b (~20 GiB for Adam)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-len", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=1200)
    ap.add_argument("--models-dir", default=None, help="where to keep the saved random models (default: temp)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--one", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
        return
    sizes = [s for s in args.sizes.split(",") if s] + (["1.3b"] if args.big else [])
    root = Path(args.models_dir or tempfile.mkdtemp(prefix="zorba-opt-"))
    results = {}
    for size in sizes:
        path = build_opt(size, root / f"opt-{size}")
        results[size] = measure_model(path, OPT_SIZES[size]["num_hidden_layers"], args)
        print(render({size: results[size]}, args.device), flush=True)
    summary = {"device": args.device, "batch_size": args.batch_size, "max_len": args.max_len, "results": results}
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    print(render(results, args.device))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
