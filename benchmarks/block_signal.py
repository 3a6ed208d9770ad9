"""Which block sets would make a ZO step most productive? Backprop measurements, for analysis only.

For a block set S, Gaussian/Rademacher SPSA with step eta has (docs/theory.md, A1 and "Which blocks
pay"): E f(w+) ~ f(w) - eta sig_S + (eta^2 / 2) e_S tr(H_SS), with
  sig_S = |grad_S f|^2                 (the full-data gradient's energy on S; here: mean of many batches)
  e_S   = E |grad_S F(w; batch)|^2     (what a client's squared scalar measures)
  tr(H_SS) ~ h_S = E |grad_S l(w; x)|^2 (Gauss-Newton: the per-example gradient energy)
so the best step is sig_S / (e_S h_S) and it buys sig_S^2 / (2 e_S h_S) per step. With a step that
falls like 1 / d_S instead (one smoothness constant for every direction) the decrease is
sig_S^2 / (2 L e_S d_S): proportional to the energy density. The two predictions disagree exactly
where block activation is supposed to help; this script measures both for the default model.

    python benchmarks/block_signal.py --out docs/block_signal/minilm-sst2.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from zorba.federation.results import versions


def gradient_energies(batches: int, batch_size: int, examples: int, seed: int, data: Path) -> dict:
    from zorba.core.models import load_model
    from zorba.core.scoring import COSINE_SCALE, Scorer
    from zorba.core.tasks import get_task, read_examples

    torch.manual_seed(seed)
    lm, task = load_model("minilm"), get_task("sst2")
    train = read_examples(data / "sst2" / "train.tsv", task)
    random.Random(seed).shuffle(train)
    scorer, model = Scorer(lm, task, 64), lm.model.float()
    for p in model.parameters():
        p.requires_grad_(True)

    def grads(batch) -> dict[str, torch.Tensor]:
        # Scorer.logits runs under inference_mode; the same cosine scoring, with autograd on.
        n = len(scorer.label_seqs)
        ids, mask = scorer._pad(list(scorer.encode(batch)) + scorer.label_seqs)
        hidden = model(input_ids=ids, attention_mask=mask).last_hidden_state
        w = mask.unsqueeze(-1).float()
        pooled = F.normalize((hidden * w).sum(1) / w.sum(1), dim=-1)
        logits = COSINE_SCALE * pooled[:-n] @ pooled[-n:].T
        model.zero_grad()
        F.cross_entropy(logits, torch.tensor([e.label for e in batch])).backward()
        out: dict[str, list[torch.Tensor]] = {}
        for name, p in model.named_parameters():
            out.setdefault(group(name), []).append(p.grad.detach().flatten().clone())
        return {k: torch.cat(v) for k, v in out.items()}

    per_batch = [grads(train[i * batch_size:(i + 1) * batch_size]) for i in range(batches)]
    start = batches * batch_size
    per_example = [grads([e]) for e in train[start:start + examples]]
    groups = list(per_batch[0])
    mean = {k: sum(g[k] for g in per_batch) / batches for k in groups}
    return {k: {"d": mean[k].numel(),
                "sig": float(mean[k].pow(2).sum()),
                "e": sum(float(g[k].pow(2).sum()) for g in per_batch) / batches,
                "h": sum(float(g[k].pow(2).sum()) for g in per_example) / examples} for k in groups}


def group(name: str) -> str:
    """Parameter -> group: embeddings / layer i, each split into matrices and vectors (norms, biases)."""
    where = f"layer.{name.split('encoder.layer.')[1].split('.')[0]}" if "encoder.layer." in name else "embeddings"
    vector = name.endswith("bias") or "LayerNorm" in name
    return where + (" vectors" if vector else " matrices")


def block_sets(groups: list[str]) -> dict[str, list[str]]:
    layers = sorted({g.split(" ")[0] for g in groups if g.startswith("layer.")})
    whole = {b: [g for g in groups if g.split(" ")[0] == b] for b in ["embeddings", *layers]}
    return {"all": groups,
            "layers (no embeddings)": [g for b in layers for g in whole[b]],
            "embeddings": whole["embeddings"],
            **{b: whole[b] for b in layers},
            "last 3 layers": [g for b in layers[-3:] for g in whole[b]],
            "norms and biases": [g for g in groups if g.endswith("vectors")]}


def predictions(energies: dict) -> dict:
    out = {}
    for name, members in block_sets(list(energies)).items():
        d, sig, e, h = (sum(energies[g][k] for g in members) for k in ("d", "sig", "e", "h"))
        out[name] = {"d": d, "sig": sig, "e": e, "h": h, "signal_fraction": sig / e,
                     "decrease_gauss_newton": sig ** 2 / (2 * e * h), "decrease_one_L": sig ** 2 / (2 * e * d)}
    ref = out["all"]
    for row in out.values():
        row["gauss_newton_vs_all"] = row["decrease_gauss_newton"] / ref["decrease_gauss_newton"]
        row["one_L_vs_all"] = row["decrease_one_L"] / ref["decrease_one_L"]
        row["best_step_vs_all_gauss_newton"] = (row["sig"] / (row["e"] * row["h"])) / (ref["sig"] / (ref["e"] * ref["h"]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--examples", type=int, default=48, help="single examples for the per-example energy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    torch.set_num_threads(1)
    t0 = time.time()
    energies = gradient_energies(a.batches, a.batch_size, a.examples, a.seed, a.data_dir)
    rows = predictions(energies)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"config": vars(a) | {"data_dir": str(a.data_dir), "out": str(a.out)},
                                 "versions": versions(), "seconds": time.time() - t0,
                                 "groups": energies, "block_sets": rows}, indent=1))
    print(f"{'block set':24} {'d':>10} {'sig/e':>6} {'GN decrease vs all':>19} {'1/d decrease vs all':>20} {'GN best step vs all':>20}")
    for name, r in rows.items():
        print(f"{name:24} {r['d']:>10} {r['signal_fraction']:>6.3f} {r['gauss_newton_vs_all']:>19.2f} "
              f"{r['one_L_vs_all']:>20.2f} {r['best_step_vs_all_gauss_newton']:>20.2f}")


if __name__ == "__main__":
    main()
