"""Measure a client's peak memory in a fresh process: load the model, put it in the client's format,
run one local round on the given blocks, report peak RSS (CPU) or torch.cuda.max_memory_allocated (GPU).

"Client memory" (docs/memory.md). On CPU: the peak resident set of the whole client process
(runtime + weights + activations + scratch), from start, loading included (`process_peak_rss_bytes`),
and of the round alone (`peak_rss_bytes`: the high-water mark is reset once the weights are in the
client's format); the exact fp32 state lives in an unlinked temp file, so it is not resident. The zo
client streams a safetensors checkpoint into its format (memory/streamload.py), so loading peaks
below training. On a GPU it is the accelerator's peak allocation during the round.

Modes, so that baselines are measured the same way on the same batch:
- "zo": the client (TieredReplica in `precision`, `blocks` active), one local round;
- "inference": the fp32 model, the same number of forward passes on the same batches;
- "adam": first-order FedAvg's client, fp32 model, forward + backward + Adam step per local step;
- "fo-head": the zo client's format and pool, its label head stepped by the exact gradient (SGD) instead
  of SPSA: the `fedavg-head` baseline's round in zorba's client format.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass

MODES = ("zo", "inference", "adam", "fo-head")
_CLIENT_FORMAT = ("zo", "fo-head")  # modes that run in zorba's client format (streamed, TieredReplica)
RANDOM_MODELS = {
    # name: (family, config overrides); tokenizer = the embedded MiniLM's (ids < 30522 fit every vocab)
    "opt-125m": ("opt", {}),
    "opt-tiny": ("opt", dict(hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=2,
                             word_embed_proj_dim=32, vocab_size=30522)),
    "bert-tiny": ("bert", dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)),
    "llama-tiny": ("llama", dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                 num_key_value_heads=1, vocab_size=30522)),
    "gpt2-tiny": ("gpt2", dict(n_embd=32, n_layer=2, n_head=2, vocab_size=30522)),
}


@dataclass
class MemoryProbe:
    model: str
    task: str
    blocks: tuple[int, ...]
    batch_size: int
    max_len: int
    local_steps: int = 1
    device: str = "cpu"
    data_dir: str | None = None
    precision: str = "bf16"  # frozen blocks' dtype on the client (zorba.memory.precision)
    mode: str = "zo"
    load: str = "stream"  # zo: "stream" the checkpoint into the client's format (memory/streamload.py) or "full"
    label_head: bool = False  # the model carries a label head (core/label_head.py)
    head_pool: int = 160  # a head-only client's pool of examples whose features it holds (client.head_steps)


def load_probe_model(spec: str):
    """A model by name/path (models.load_model), or `random:<name>` with <name> in RANDOM_MODELS:
    seeded random weights of a known architecture (benchmarks of sizes we have no checkpoint for)."""
    from zorba.core.models import load_model

    if not spec.startswith("random:"):
        return load_model(spec)
    import torch
    import transformers as tf

    from zorba.core.blocks import split_into_blocks
    from zorba.core.models import LoadedModel, resolve_source
    from zorba.errors import UserError

    name = spec.split(":", 1)[1]
    if name not in RANDOM_MODELS:
        raise UserError(f"unknown random model {name!r}; choose one of {sorted(RANDOM_MODELS)}")
    family, overrides = RANDOM_MODELS[name]
    config_cls = {"opt": tf.OPTConfig, "bert": tf.BertConfig, "llama": tf.LlamaConfig, "gpt2": tf.GPT2Config}[family]
    torch.manual_seed(0)
    config = config_cls(**overrides)
    if family == "bert":
        model, kind = tf.BertModel(config, add_pooling_layer=False), "encoder"
    else:
        model, kind = tf.AutoModelForCausalLM.from_config(config), "causal"
    model.eval().requires_grad_(False)
    tokenizer = tf.AutoTokenizer.from_pretrained(resolve_source("minilm"))
    return LoadedModel(model, tokenizer, kind, spec, split_into_blocks(model))


def _status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def process_peak_rss() -> int:
    """This process's peak resident memory so far, bytes: VmHWM on Linux, getrusage elsewhere
    (a Flower deployment client reports it with each round's report)."""
    if sys.platform.startswith("linux"):
        return _status_bytes("VmHWM")
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on the BSDs


def reset_peak_rss() -> bool:
    """Return freed heap to the OS, then reset VmHWM to the current RSS (Linux >= 4.0)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def probe_batches(p: MemoryProbe, scorer, examples) -> list[tuple[list[list[int]], list[int]]]:
    """The local steps' batches: the same for every mode, so peaks compare like for like."""
    ids = scorer.encode(examples)
    labels = [e.label for e in examples]
    out = []
    for k in range(p.local_steps):
        rows = [(k * p.batch_size + r) % len(ids) for r in range(p.batch_size)]
        out.append(([ids[r] for r in rows], [labels[r] for r in rows]))
    return out


def _probe(p: MemoryProbe) -> dict:
    import torch
    import transformers.modeling_utils  # noqa: F401 - library code is runtime: loaded before it is measured

    from zorba.core.scoring import Scorer
    from zorba.core.tasks import get_task, read_examples
    from zorba.federation.config import find_data_dir, make_config

    runtime = _status_bytes("VmRSS")
    task = get_task(p.task)
    cfg = make_config(task=p.task, data_dir=p.data_dir)
    wanted = max(p.batch_size * max(p.local_steps, 4), p.head_pool if p.label_head else 0)
    examples = read_examples(find_data_dir(cfg) / p.task / "dev.tsv", task)[:wanted]
    lm, replica = _load(p)
    scorer = Scorer(lm, task, p.max_len)
    batches = probe_batches(p, scorer, examples)
    load_peak = _status_bytes("VmHWM")
    reset_ok = reset_peak_rss()
    ready = _status_bytes("VmRSS")
    if p.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ready_cuda = torch.cuda.memory_allocated()
    _run(p, lm, scorer, batches, replica, examples)
    out = {
        "runtime_rss_bytes": runtime, "load_peak_rss_bytes": load_peak, "ready_rss_bytes": ready,
        "peak_rss_bytes": _status_bytes("VmHWM"), "peak_reset": reset_ok,
        "process_peak_rss_bytes": max(load_peak, _status_bytes("VmHWM")),
        "params": sum(b.numel for b in lm.blocks),
        "active_params": sum(lm.blocks[b].numel for b in p.blocks),
    }
    if p.device.startswith("cuda"):
        out["ready_cuda_bytes"] = ready_cuda
        out["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    return out


def _load(p: MemoryProbe):
    """(model, replica or None): the zo client streams a checkpoint into its format, as a Flower
    client does; random weights and the baselines load the fp32 model."""
    if p.load not in ("stream", "full"):
        raise ValueError(f"unknown probe load {p.load!r}")
    if p.mode in _CLIENT_FORMAT and p.load == "stream" and not p.model.startswith("random:"):
        from zorba.core.tasks import get_task
        from zorba.memory.streamload import load_client_replica

        replica = load_client_replica(p.model, p.precision, p.device,
                                      label_head=get_task(p.task).num_labels if p.label_head else 0)
        return replica.lm, replica
    lm = load_probe_model(p.model)
    if p.label_head:
        from zorba.core.label_head import attach_label_head
        from zorba.core.tasks import get_task

        attach_label_head(lm, get_task(p.task).num_labels)
    lm.model.to(p.device)
    return lm, _prepare(p, lm)


def _prepare(p: MemoryProbe, lm):
    if p.mode in _CLIENT_FORMAT:
        from zorba.memory.precision import make_client_replica

        return make_client_replica(lm, p.precision)
    if p.mode not in MODES:
        raise ValueError(f"unknown probe mode {p.mode!r}")
    _own_weights(lm)
    from zorba.memory.precision import return_freed_memory_promptly

    return_freed_memory_promptly()  # as the ZO client does when it builds its replica: a fair comparison
    return None


def _own_weights(lm) -> None:
    """Copy weights that still point into the memory-mapped checkpoint into the process's own memory.

    Mapped checkpoint pages only become resident when first touched, i.e. during the measured round;
    the ZO client has copied its weights already (into its store and working copy). Copying here makes
    every mode start the round with its weights resident, so the peaks differ by what the round adds.
    """
    import torch

    with torch.no_grad():
        for param in lm.model.parameters():
            param.data = param.data.clone()


def _run(p: MemoryProbe, lm, scorer, batches, replica, examples) -> None:
    if p.mode == "zo":  # the client's own loops (client.local_steps, client.head_steps)
        import numpy as np

        from zorba.federation import client
        from zorba.wire.protocol import Hyper, RoundPlan

        snap = replica.snapshot(p.blocks)
        hyper = Hyper(lr=1e-6, mu=1e-3, local_steps=p.local_steps, batch_size=p.batch_size)
        if client.trains_label_head_only(replica, p.blocks):
            ids = scorer.encode(examples)
            client.head_steps(RoundPlan(0, 0, p.blocks, 0, hyper), client.ClientState(0, np.arange(len(ids))),
                              replica, scorer, client.TokenizedData(ids, [e.label for e in examples]), p.head_pool)
        else:
            client.local_steps(replica, p.blocks, scorer,
                               [(ids, labels, k) for k, (ids, labels) in enumerate(batches)], hyper)
        replica.restore(snap)
    elif p.mode == "fo-head":
        _head_gradient_steps(p, replica, scorer, examples)
    elif p.mode == "inference":
        for ids, labels in batches:
            scorer.loss(ids, labels)
            scorer.loss(ids, labels)
    else:
        _adam_steps(lm, scorer, batches)


def _head_gradient_steps(p: MemoryProbe, replica, scorer, examples) -> None:
    """`fedavg-head`'s client round (methods/fedavg_head.py) on zorba's client: the pool's features, then
    SGD steps on the label head's exact gradient."""
    import numpy as np
    import torch

    from zorba.core.label_head import label_head_of
    from zorba.federation import client

    snap = replica.snapshot(p.blocks)
    ids = scorer.encode(examples)
    data = client.TokenizedData(ids, [e.label for e in examples])
    pool = client.head_pool(np.arange(len(ids)), p.head_pool, 0, 0)
    feats, labels = client.pool_features(scorer, data, pool, p.batch_size)
    offset = label_head_of(replica.lm.model).offset
    offset.requires_grad_(True)
    client.gradient_head_steps(scorer, feats, labels, torch.optim.SGD([offset], lr=1e-3), p.local_steps, p.batch_size, 0, 0)
    offset.requires_grad_(False)
    replica.restore(snap)


def _adam_steps(lm, scorer, batches) -> None:
    """First-order FedAvg's local work: fp32 weights, gradients, Adam's two moments, stored activations."""
    import torch
    import torch.nn.functional as F

    lm.model.requires_grad_(True)
    opt = torch.optim.Adam(lm.model.parameters(), lr=1e-5)
    logits_fn = type(scorer).logits.__wrapped__  # the scorer's forward without its inference_mode wrapper
    for ids, labels in batches:
        with torch.enable_grad():
            loss = F.cross_entropy(logits_fn(scorer, ids), torch.as_tensor(labels, device=scorer.device))
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


def measure(p: MemoryProbe, timeout: float = 600) -> dict:
    """Run the probe in a fresh interpreter so no other client's or the server's memory is counted."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "-m", "zorba.federation.memprobe", json.dumps(asdict(p))],
        capture_output=True, text=True, timeout=timeout, env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory probe failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def largest_block_sets(blocks: Sequence, history: Sequence[dict]) -> dict[int, tuple[int, ...]]:
    """Per client planned at least once, the largest block set (in parameters) `history` planned for
    it (round records with a "blocks" map, as the in-process runner and the Flower engines write them)."""
    sizes = [b.numel for b in blocks]
    largest: dict[int, tuple[int, ...]] = {}
    for rec in history:
        for c, planned in rec["blocks"].items():
            cur = largest.get(int(c), ())
            if sum(sizes[b] for b in planned) > sum(sizes[b] for b in cur) or not cur:
                largest[int(c)] = tuple(planned)
    return largest


def planned_client_peaks(cfg, blocks: Sequence, history: Sequence[dict]) -> list[int]:
    """Per client, the peak RSS of a fresh process running its largest planned block set; one probe
    per distinct set. 0 for a client never planned."""
    return _peaks_of_sets(cfg, largest_block_sets(blocks, history))[0]


def _peaks_of_sets(cfg, largest: dict[int, tuple[int, ...]]) -> tuple[list[int], int | None]:
    """(per-client peak, 0 where never planned; the runtime: the largest RSS a probe had before it
    loaded the model, i.e. Python, torch and the model library). A client's peak is its process's,
    from start: loading the checkpoint included, as a device would have to hold it."""
    from zorba.federation.runner import has_label_head

    cache: dict[tuple[int, ...], dict] = {}
    for planned in set(largest.values()):
        probe = MemoryProbe(cfg.model, cfg.task, planned, cfg.batch_size, cfg.max_len, cfg.local_steps, data_dir=cfg.data_dir,
                            precision=cfg.precision, label_head=has_label_head(cfg), head_pool=cfg.head_pool)
        cache[planned] = measure(probe)
    peaks = [cache[largest[c]]["process_peak_rss_bytes"] if c in largest else 0 for c in range(cfg.clients)]
    return peaks, max((m["runtime_rss_bytes"] for m in cache.values()), default=None)


def memory_section(cfg, blocks: Sequence, history: Sequence[dict], profiles, mem, measured: bool, how: str,
                   reported: list[int] | None = None) -> dict:
    """result.json's "memory", for either engine: each client's class, budget and the memory model's
    prediction (profiles.budget_report), its measured peak when `measured` (or the peaks the clients
    `reported`, 0 for one that never did), and whether that peak stayed within the budget, all in
    process bytes (profiles.in_process_bytes)."""
    from zorba.memory.profiles import budget_report, in_process_bytes

    largest = largest_block_sets(blocks, history)
    section = budget_report(profiles, mem, largest, calibrated=bool(cfg.memory_model))
    runtime = None
    if reported is None and measured:
        reported, runtime = _peaks_of_sets(cfg, largest)
    section["peak_bytes_per_client"] = reported
    section["how"] = how
    return in_process_bytes(section, runtime)


if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    args["blocks"] = tuple(args["blocks"])
    print(json.dumps(_probe(MemoryProbe(**args))))
