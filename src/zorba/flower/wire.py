"""zorba messages as Flower records: plans, reports and log entries travel as wire/codec.py bytes inside a
ConfigRecord (no pickle, every decoder checks sizes), the report's loss also as a MetricRecord so
Flower tooling can read it; and the measured size of a Flower message as it goes on the wire."""

from __future__ import annotations

from collections.abc import Mapping

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict

from zorba.wire import codec
from zorba.wire.protocol import LogEntry, Report, RoundPlan

PLAN, REPORT, SYNC, SETUP, METRICS = "zorba.plan", "zorba.report", "zorba.sync", "zorba.setup", "metrics"
GAP = "zorba.gap"  # a client's answer when it lacks entries before its catch-up: {"have": n}


class WireError(ValueError):
    """A Flower message that does not carry the zorba record it should."""


def _field(content: RecordDict, record: str, key: str):
    try:
        return content[record][key]
    except (KeyError, TypeError):
        raise WireError(f"message lacks {record}[{key!r}]") from None


def plan_to_records(plan: RoundPlan) -> RecordDict:
    return RecordDict({PLAN: ConfigRecord({"plan": codec.encode_plan(plan)})})


def records_to_plan(content: RecordDict) -> RoundPlan:
    return codec.decode_plan(_field(content, PLAN, "plan"))


def report_to_records(report: Report, num_examples: int, peak_rss_bytes: int = 0) -> RecordDict:
    metrics = {"train-loss": float(report.loss), "num-examples": int(num_examples)}
    if peak_rss_bytes > 0:  # the client process's own peak so far (deployment: its machine's memory)
        metrics["peak-rss-bytes"] = int(peak_rss_bytes)
    return RecordDict({REPORT: ConfigRecord({"report": codec.encode_report(report)}), METRICS: MetricRecord(metrics)})


def reported_peak(content: RecordDict) -> int | None:
    """The peak RSS a client reported with its report; None where absent or not a positive integer
    (a client's claim about itself: recorded, never trusted for anything but the report)."""
    try:
        value = content[METRICS]["peak-rss-bytes"]
    except KeyError:
        return None
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def records_to_report(content: RecordDict, plans: Mapping[int, RoundPlan]) -> Report:
    return codec.decode_report(_field(content, REPORT, "report"), plans)


def entries_to_records(entries: tuple[LogEntry, ...] | list[LogEntry], first: int) -> ConfigRecord:
    """Log entries [first, first + len) as one bytes value each (a ConfigRecord list)."""
    return ConfigRecord({"first": first, "entries": [codec.encode_entry(e) for e in entries]})


def records_to_entries(record: ConfigRecord) -> tuple[int, list[LogEntry]]:
    try:
        first, raw = int(record["first"]), list(record["entries"])
    except (KeyError, TypeError, ValueError):
        raise WireError("log record lacks 'first' or 'entries'") from None
    entries = [codec.decode_entry(b) for b in raw]
    for i, e in enumerate(entries):
        if e.round != first + i:
            raise WireError(f"log record: entry {i} is round {e.round}, expected {first + i}")
    return first, entries


def gap_in(reply: Message) -> int | None:
    """How many entries a client holds if its reply asks for a resend, else None."""
    if reply.has_error() or GAP not in reply.content:
        return None
    record = reply.content[GAP]
    have = record["have"] if isinstance(record, ConfigRecord) and "have" in record else None
    if not isinstance(have, int) or isinstance(have, bool) or have < 0:
        raise WireError(f"malformed {GAP} record (no non-negative integer 'have')")
    return have


def message_bytes(message: Message) -> dict[str, int]:
    """Bytes Flower pushes for this message: its serialised objects (message with metadata, record
    dict, records), as the SuperLink / SuperNode object store receives them; `content` leaves out
    the Message object itself (metadata, ids)."""
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    sizes = {obj_id: len(obj.deflate()) for obj_id, obj in get_all_nested_objects(message).items()}
    total = sum(sizes.values())
    own = len(message.deflate())
    return {"total": total, "content": total - own}
