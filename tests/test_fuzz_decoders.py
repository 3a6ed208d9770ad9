"""Fuzzing: the wire decoders, the durable log reader and the config loaders never crash on garbage;
every rejection is a DecodeError or UserError with a reason."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zorba.errors import UserError
from zorba.federation.config import make_config
from zorba.federation.durable import AppendLog, RunStore, frame
from zorba.federation.reliability import make_reliability
from zorba.wire import codec
from zorba.wire.protocol import ClientUpdate, Hyper, LogEntry, Report, RoundPlan, StepReport, step_seed

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
u32 = st.integers(0, 2**32 - 1)
blocks = st.lists(st.integers(0, 2**16 - 1), max_size=6, unique=True).map(lambda b: tuple(sorted(b)))


@st.composite
def entries(draw, q=None):
    q = q or draw(st.integers(1, 3))
    steps = st.lists(st.builds(StepReport, st.integers(0, 2**64 - 1), st.tuples(*[f32] * q)), max_size=3).map(tuple)
    weight = st.floats(1e-6, 1e6)
    updates = st.lists(st.builds(ClientUpdate, u32, blocks, steps, weight), max_size=3).map(tuple)
    lr = st.floats(0, 1, exclude_min=True)  # the decoders refuse a non-positive or absurd lr
    return LogEntry(draw(u32), draw(lr), q, draw(st.sampled_from(["rademacher", "gaussian"])), draw(updates))


@st.composite
def plans(draw):
    q = draw(st.integers(1, 3))
    hyper = Hyper(draw(st.floats(0, 1, exclude_min=True)), draw(st.floats(1e-6, 1)), q, draw(st.integers(1, 9)), draw(st.integers(1, 64)))
    catch_up = tuple(draw(st.lists(entries(q), max_size=2)))
    return RoundPlan(draw(u32), draw(u32), draw(blocks), draw(st.integers(0, 2**64 - 1)), hyper, catch_up)


# A report decodes against the plans of its round: client c was asked for c + 1 steps of c % 3 + 1 scalars.
REPORT_PLANS = {c: RoundPlan(7, c, (0,), 1000 + c, Hyper(1e-3, 1e-3, c % 3 + 1, c + 1)) for c in range(4)}


@st.composite
def reports(draw):
    plan = REPORT_PLANS[draw(st.integers(0, 3))]
    steps = tuple(StepReport(step_seed(plan.round_seed, plan.client, k), draw(st.tuples(*[f32] * plan.hyper.q)))
                  for k in range(plan.hyper.local_steps))
    metrics = draw(st.dictionaries(st.text(max_size=8), st.floats(allow_nan=False), max_size=3))
    return Report(plan.round, plan.client, steps, draw(f32), metrics)


def decode_report(data: bytes) -> Report:
    return codec.decode_report(data, REPORT_PLANS)


DECODERS = [(codec.decode_plan, codec.encode_plan, plans()), (decode_report, codec.encode_report, reports()),
            (codec.decode_entry, codec.encode_entry, entries())]


def decodes_or_rejects(decode, data: bytes) -> None:
    try:
        decode(data)
    except codec.DecodeError as exc:
        assert str(exc), "a rejection must say why"


@pytest.mark.parametrize("decode,encode,strategy", DECODERS, ids=["plan", "report", "entry"])
def test_random_bytes_never_crash(decode, encode, strategy):
    @FAST
    @given(st.binary(max_size=200), st.sampled_from([b"", b"ZP2", b"ZR2", b"ZL2", b"ZL1"]))
    def check(tail, magic):
        decodes_or_rejects(decode, magic + tail)

    check()


@pytest.mark.parametrize("decode,encode,strategy", DECODERS, ids=["plan", "report", "entry"])
def test_valid_messages_round_trip_and_mutations_never_crash(decode, encode, strategy):
    @FAST
    @given(strategy, st.data())
    def check(msg, data):
        wire = encode(msg)
        back = decode(wire)
        assert encode(back) == wire
        pos = data.draw(st.integers(0, len(wire) - 1))
        flipped = bytearray(wire)
        flipped[pos] ^= data.draw(st.integers(1, 255))
        decodes_or_rejects(decode, bytes(flipped))
        decodes_or_rejects(decode, wire[: data.draw(st.integers(0, len(wire)))])
        decodes_or_rejects(decode, wire + data.draw(st.binary(min_size=1, max_size=8)))

    check()


def test_decoders_reject_non_bytes():
    for decode in (codec.decode_plan, decode_report, codec.decode_entry):
        for junk in (None, "ZP1", 3, [1, 2]):
            with pytest.raises(codec.DecodeError):
                decode(junk)


_CONFIG_KEYS = ["clients", "rounds", "local_steps", "lr", "mu", "q", "batch_size", "max_len", "alpha", "participation",
                "planner", "task", "dist", "seed", "block_fractions", "eval_every", "train_size", "precision", "bogus"]
_ANY = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(), st.text(max_size=12),
                 st.lists(st.floats(), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2))


@FAST
@given(st.dictionaries(st.sampled_from(_CONFIG_KEYS), _ANY, max_size=5))
def test_config_loader_accepts_or_says_why(values):
    try:
        cfg = make_config(**values)
    except UserError as exc:
        assert str(exc).startswith("invalid option") and "\n" not in str(exc)
        return
    assert cfg.clients >= 1 and cfg.rounds >= 1 and math.isfinite(cfg.lr) and cfg.lr > 0


@FAST
@given(st.dictionaries(st.sampled_from(["dropout", "deadline", "clip", "aggregate", "trim", "other"]), _ANY, max_size=4))
def test_reliability_options_accept_or_say_why(values):
    try:
        rel = make_reliability(**values)
    except UserError as exc:
        assert str(exc).startswith("invalid option") and "\n" not in str(exc)
        return
    assert 0 <= rel.dropout < 1 and rel.clip >= 0 and 0 <= rel.trim < 0.5


def test_durable_log_reader_on_garbage(tmp_path):
    """Random bytes after valid records: the reader keeps the valid prefix, cuts a torn tail, or says
    which record is damaged; it never crashes and never returns a record that was not written."""

    @FAST
    @given(st.lists(st.binary(max_size=40), max_size=4), st.binary(max_size=60))
    def check(records, garbage):
        path = tmp_path / "log.bin"
        path.write_bytes(b"".join(frame(r) for r in records) + garbage)
        try:
            got = AppendLog(path, b"ZL1").records
        except UserError as exc:
            assert "damaged" in str(exc)
            return
        assert got[: len(records)] == records

    check()


def test_run_store_rejects_garbage_entries(tmp_path):
    store = RunStore.create(tmp_path / "state", {"x": 1})
    store._log.append(b"not an entry")
    with pytest.raises(UserError, match="not a log entry"):
        RunStore.open(tmp_path / "state")
