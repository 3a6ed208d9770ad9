"""Compact binary wire format for plans, reports and log entries (little-endian, struct).

Why not pickle or JSON: pickle executes code from the network; JSON spends ~20 bytes on a float32.
A report carries only what the server cannot derive: its steps' seeds follow from the plan
(`protocol.step_seed`), so a local step costs its q float32 scalars and a report 16 + 4 K q bytes
(no metrics). Every decoder checks sizes and values before it allocates, raising DecodeError with a
reason (fuzzed in the tests)."""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping

from zorba.wire.keys import DISTRIBUTIONS
from zorba.wire.protocol import ClientUpdate, Hyper, LogEntry, Report, RoundPlan, StepReport, step_seed

_PLAN, _REPORT, _ENTRY = b"ZP2", b"ZR2", b"ZL2"
_ENTRY_V1 = b"ZL1"  # before the step rule: decoded with lr_scale 1 and no coverage factor (old logs stay readable)
MAX_ITEMS = 1 << 20  # any count above this is a corrupt or hostile message
MAX_LR_SCALE = 1e6  # a step rule's factor beyond this is a corrupt or hostile entry
MAX_LR = MAX_MU = 1.0  # RunConfig's bounds: a larger lr or mu can only be damage or an attack


class DecodeError(ValueError):
    """A message that is not a valid zorba message; the reason says what is wrong."""


class _Writer:
    def __init__(self, magic: bytes) -> None:
        self.parts = [magic]

    def put(self, fmt: str, *values) -> _Writer:
        self.parts.append(struct.pack("<" + fmt, *values))
        return self

    def bytes(self) -> bytes:
        return b"".join(self.parts)


class _Reader:
    def __init__(self, data: bytes, magic: bytes) -> None:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        self.data, self.pos = bytes(data), len(magic)
        if self.data[: len(magic)] != magic:
            raise DecodeError(f"bad magic {self.data[:len(magic)]!r}, expected {magic!r}")

    def get(self, fmt: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            raise DecodeError(f"truncated message at byte {self.pos}")
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def count(self, fmt: str = "I") -> int:
        (n,) = self.get(fmt)
        if n > MAX_ITEMS:
            raise DecodeError(f"count {n} exceeds the limit {MAX_ITEMS}")
        return n

    def end(self) -> None:
        if self.pos != len(self.data):
            raise DecodeError(f"{len(self.data) - self.pos} trailing bytes")


def _dist_code(dist: str) -> int:
    return DISTRIBUTIONS.index(dist)


def _dist(r: _Reader) -> str:
    (code,) = r.get("B")
    if code >= len(DISTRIBUTIONS):
        raise DecodeError(f"unknown distribution code {code}")
    return DISTRIBUTIONS[code]


def _put_steps(w: _Writer, steps: tuple[StepReport, ...], q: int) -> None:
    w.put("I", len(steps))
    for s in steps:
        if len(s.scalars) != q:
            raise ValueError(f"step has {len(s.scalars)} scalars, expected q={q}")
        w.put(f"Q{q}f", s.seed, *s.scalars)


def _get_steps(r: _Reader, q: int) -> tuple[StepReport, ...]:
    """The count is checked against the bytes left before a single step is decoded or allocated."""
    n = r.count()
    if n * struct.calcsize(f"<Q{q}f") > len(r.data) - r.pos:
        raise DecodeError(f"{n} steps announced, the message is too short to hold them")
    steps = []
    for _ in range(n):
        seed, *scalars = r.get(f"Q{q}f")
        steps.append(StepReport(seed, tuple(scalars)))
    return tuple(steps)


def _put_blocks(w: _Writer, blocks: tuple[int, ...]) -> None:
    w.put(f"H{len(blocks)}H", len(blocks), *blocks)


def _get_blocks(r: _Reader) -> tuple[int, ...]:
    n = r.count("H")
    blocks = r.get(f"{n}H")
    if list(blocks) != sorted(set(blocks)):
        raise DecodeError("block ids must be sorted and distinct")
    return tuple(blocks)


def _put_entry(w: _Writer, e: LogEntry) -> None:
    # 0.0: the slot of the coverage exponent, which was measured, lost and removed (docs/theory.md, A3);
    # kept so that every log written since the step rule still decodes.
    w.put("IdHBdI", e.round, e.lr, e.q, _dist_code(e.dist), 0.0, len(e.updates))
    for u in e.updates:
        w.put("Idd", u.client, u.weight, u.lr_scale)
        _put_blocks(w, u.blocks)
        _put_steps(w, u.steps, e.q)


def _check_rate(name: str, value: float, limit: float) -> None:
    if not (math.isfinite(value) and 0 < value <= limit):
        raise DecodeError(f"{name} {value} is not in (0, {limit}]")


def _get_entry(r: _Reader, scaled: bool = True) -> LogEntry:
    rnd, lr, q = r.get("IdH")
    dist = _dist(r)
    (beta,) = r.get("d") if scaled else (0.0,)
    if q < 1:
        raise DecodeError("q must be >= 1")
    if beta != 0.0:
        raise DecodeError(f"coverage exponent {beta}: logged by a zorba that summed covering clients; "
                          "this one only averages them")
    _check_rate("lr", lr, MAX_LR)
    updates = []
    for _ in range(r.count()):
        client, weight, lr_scale = r.get("Idd") if scaled else (*r.get("Id"), 1.0)
        if not (math.isfinite(weight) and weight > 0):
            raise DecodeError(f"client {client}: weight {weight} is not a positive finite number")
        _check_rate(f"client {client}: lr_scale", lr_scale, MAX_LR_SCALE)
        blocks = _get_blocks(r)
        updates.append(ClientUpdate(client, blocks, _get_steps(r, q), weight, lr_scale))
    return LogEntry(rnd, lr, q, dist, tuple(updates))


def encode_entry(e: LogEntry) -> bytes:
    w = _Writer(_ENTRY)
    _put_entry(w, e)
    return w.bytes()


def decode_entry(data: bytes) -> LogEntry:
    v1 = isinstance(data, bytes | bytearray | memoryview) and bytes(data[: len(_ENTRY_V1)]) == _ENTRY_V1
    r = _Reader(data, _ENTRY_V1 if v1 else _ENTRY)
    e = _get_entry(r, scaled=not v1)
    r.end()
    return e


def encode_plan(p: RoundPlan) -> bytes:
    h = p.hyper
    w = _Writer(_PLAN).put("IIQddHHHB", p.round, p.client, p.round_seed, h.lr, h.mu, h.q, h.local_steps, h.batch_size, _dist_code(h.dist))
    _put_blocks(w, p.blocks)
    w.put("I", len(p.catch_up))
    for e in p.catch_up:
        _put_entry(w, e)
    return w.bytes()


def decode_plan(data: bytes) -> RoundPlan:
    r = _Reader(data, _PLAN)
    rnd, client, rseed, lr, mu, q, k, batch = r.get("IIQddHHH")
    hyper = Hyper(lr, mu, q, k, batch, _dist(r))
    if not (q >= 1 and k >= 1 and batch >= 1):
        raise DecodeError("hyper-parameters out of range")
    _check_rate("lr", lr, MAX_LR * MAX_LR_SCALE)  # a plan's lr carries its client's step factor
    _check_rate("mu", mu, MAX_MU)
    blocks = _get_blocks(r)
    catch_up = tuple(_get_entry(r) for _ in range(r.count()))
    r.end()
    return RoundPlan(rnd, client, blocks, rseed, hyper, catch_up)


def encode_report(rep: Report) -> bytes:
    """round, client, loss, the metrics, then the K x q scalars; the step count is the message's length."""
    w = _Writer(_REPORT).put("IIfB", rep.round, rep.client, rep.loss, len(rep.metrics))
    for key, value in rep.metrics.items():
        raw = key.encode()[:255]
        w.put(f"B{len(raw)}sd", len(raw), raw, value)
    q = len(rep.steps[0].scalars) if rep.steps else 0
    if any(len(s.scalars) != q for s in rep.steps):
        raise ValueError("every step of a report must carry the same number of scalars")
    scalars = [g for s in rep.steps for g in s.scalars]
    return w.put(f"{len(scalars)}f", *scalars).bytes()


def decode_report(data: bytes, plans: Mapping[int, RoundPlan]) -> Report:
    """A report answers one of `plans` (client -> this round's plan): the plan gives the step count,
    q and the seeds. The scalars' size is checked against the plan before any is decoded."""
    r = _Reader(data, _REPORT)
    rnd, client, loss, n_metrics = r.get("IIfB")
    plan = plans.get(client)
    if plan is None or plan.round != rnd:
        raise DecodeError(f"client {client}: no plan for round {rnd}")
    metrics = {}
    for _ in range(n_metrics):
        (klen,) = r.get("B")
        raw, value = r.get(f"{klen}sd")
        try:
            metrics[raw.decode()] = value
        except UnicodeDecodeError:
            raise DecodeError("metric name is not UTF-8") from None
    k, q = plan.hyper.local_steps, plan.hyper.q
    if len(r.data) - r.pos != 4 * k * q:
        raise DecodeError(f"client {client}: {len(r.data) - r.pos} bytes of scalars, expected {k} steps x {q} float32")
    values = r.get(f"{k * q}f")
    r.end()
    steps = tuple(StepReport(step_seed(plan.round_seed, client, i), tuple(values[i * q : (i + 1) * q])) for i in range(k))
    return Report(rnd, client, steps, loss, metrics)
