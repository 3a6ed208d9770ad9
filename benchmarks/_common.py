"""Shared by the benchmark scripts: models by spec, one SST-2 batch, interleaved best-of timing."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from zorba.core.scoring import Scorer  # noqa: E402
from zorba.core.tasks import get_task, read_examples  # noqa: E402
from zorba.federation.memprobe import load_probe_model  # noqa: E402


def _find_data() -> str:
    if os.environ.get("ZORBA_DATA_DIR"):
        return os.environ["ZORBA_DATA_DIR"]
    here = Path(__file__).resolve()
    for p in (*here.parents, *Path.cwd().resolve().parents, Path.cwd().resolve()):
        if (p / "shared" / "data" / "sst2").is_dir():
            return str(p / "shared" / "data")
    return _synthetic_data()


def _synthetic_data() -> str:
    """A stand-in SST-2 dev split for machines without shared/data (e.g. a lent GPU): timings and
    memory depend on the shapes, not on the words."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="zorba-data-"))
    words = "a film that is neither funny nor moving , yet strangely watchable for most of its length".split()
    for task in ("sst2",):
        (root / task).mkdir()
        rows = [f"{i % 2}\t{' '.join(words[: 6 + (7 * i) % len(words)])} ." for i in range(256)]
        for split in ("train", "dev"):
            (root / task / f"{split}.tsv").write_text("label\tsentence\n" + "\n".join(rows) + "\n")
    os.environ["ZORBA_DATA_DIR"] = str(root)
    return str(root)


DATA = _find_data()
MODELS = {"tiny": "random:bert-tiny", "minilm": "minilm", "opt125m": "random:opt-125m"}


def load(name: str, device: str = "cpu"):
    lm = load_probe_model(MODELS.get(name, name))
    lm.model.to(device)
    return lm


def batch(lm, batch_size: int = 16, max_len: int = 64, task: str = "sst2"):
    """The first `batch_size` SST-2 dev examples, tokenised for `lm`: a scorer, ids and labels."""
    t = get_task(task)
    examples = read_examples(os.path.join(DATA, task, "dev.tsv"), t)[:batch_size]
    scorer = Scorer(lm, t, max_len)
    return scorer, scorer.encode(examples), [e.label for e in examples]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_of(fns: dict[str, Callable[[], object]], reps: int = 5, device: str = "cpu") -> dict[str, float]:
    """Seconds per call, the minimum over `reps` rounds that run every function once, in turn: on a
    shared machine the minimum is the least disturbed, and interleaving exposes all to the same load."""
    for f in fns.values():
        f()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(reps):
        for name, f in fns.items():
            sync(device)
            start = time.perf_counter()
            f()
            sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def timing_args(models: str = "minilm,opt125m") -> argparse.Namespace:
    """--models, --reps, --threads: the options of a timing script; applies --threads (one thread is
    steadier on a shared machine: a multi-threaded op stalls when one of its threads is descheduled)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=models)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    return args
