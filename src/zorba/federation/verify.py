"""`zorba verify`: check a finished run's whole chain, then rebuild its weights from base + log.

The chain: state/header.json's checksum, the header's config against result.json's, the durable log
(state/log.bin, CRC per record) against log.jsonl, the base model's hash, and finally base + replay of
the log against the saved weights, bit for bit. Outcomes: (True, why) ok; (False, why) the run's
records or weights disagree; UserError (exit 2) when the run cannot be checked (missing or malformed
files), so a script can tell "differs" from "could not look".

A run written before headers were checksummed (zorba-state/1) is still verified: the weights depend
only on base + log, which are checked in full; the header's checksum is then reported as unchecked.
A Flower run has no state folder: its chain starts at log.jsonl.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from zorba.core.label_head import OFFSET_KEY, attach_label_head
from zorba.core.models import load_model, state_digest
from zorba.core.replica import Replica
from zorba.errors import UserError
from zorba.federation.durable import OLD_FORMATS, RunStore, check_header
from zorba.wire.logio import read_log


def verify(run_dir: Path) -> tuple[bool, str]:
    """(ok, message); UserError when the run cannot be checked."""
    result = _read_result(run_dir)
    weights = run_dir / "model" / "model.safetensors"
    if not weights.is_file():
        raise UserError(f"{weights}: missing")
    log = read_log(run_dir / "log.jsonl")
    problem, note = _check_state(run_dir, result, log)
    if problem:
        return False, problem
    try:
        ok, message = _replay_and_compare(result["model"], result["base_model_sha256"], log, weights)
    except UserError:
        raise
    except Exception as exc:  # a log or weights file that parses but cannot be applied: cannot check
        raise UserError(f"{run_dir}: cannot replay the log onto the base model ({type(exc).__name__}: {exc})") \
            from None
    return ok, message + note


def _read_result(run_dir: Path) -> dict:
    path = run_dir / "result.json"
    if not path.is_file():
        raise UserError(f"{run_dir}: not a zorba run folder (no result.json)")
    try:
        result = json.loads(path.read_text())
        if not (isinstance(result, dict) and isinstance(result["model"], str)
                and isinstance(result["base_model_sha256"], str)):
            raise ValueError("not an object with 'model' and 'base_model_sha256' strings")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: malformed ({type(exc).__name__}: {exc})") from None
    return result


def _check_state(run_dir: Path, result: dict, log: list) -> tuple[str, str]:
    """('' or why the chain breaks, a note for the ok message)."""
    folder = run_dir / "state"
    if not (folder / "header.json").is_file():
        return "", " (no state folder: log.jsonl checked against the weights only)"
    header = _read_header(folder / "header.json")
    note = ""
    if header.get("format") in OLD_FORMATS:
        note = " (state header predates header checksums: not checked)"
    else:
        check_header(folder / "header.json", header)
    for key in ("config", "reliability"):
        if key in result and header.get(key) != result[key]:
            return f"result.json's {key} differs from state/header.json's", note
    if header.get("base_model_sha256") != result["base_model_sha256"]:
        return "result.json's base model hash differs from state/header.json's", note
    entries = RunStore(folder, header).entries
    if entries != log:
        return f"log.jsonl ({len(log)} rounds) differs from the durable log state/log.bin ({len(entries)})", note
    return "", note


def _read_header(path: Path) -> dict:
    try:
        header = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable run header ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: not a run header")
    return header


def _replay_and_compare(model_id: str, base_digest: str, log: list, weights: Path) -> tuple[bool, str]:
    from safetensors.torch import load_file

    lm = load_model(model_id)
    saved = load_file(str(weights))
    head = saved.get(OFFSET_KEY)
    if head is not None:  # the run trained a label head: its base is zeros of the saved shape
        attach_label_head(lm, head.shape[0])
    if state_digest(lm.model) != base_digest:
        return False, f"base model {model_id!r} differs from the one this run started from"
    replica = Replica(lm)
    for entry in log:
        replica.apply(entry)
    params = dict(lm.model.named_parameters())
    for name, tensor in saved.items():
        if name in params and not torch.equal(params[name].detach(), tensor):
            return False, f"tensor {name} differs from base + replay of the log"
    missing = set(params) - set(saved)
    if missing:
        return False, f"saved weights lack {len(missing)} tensors (e.g. {sorted(missing)[0]})"
    return True, f"ok: {len(saved)} tensors bit-identical to base + {replica.cursor} replayed rounds"
