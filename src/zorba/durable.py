"""Durable, append-only storage for a run's state folder (DIR/state/): a round counts only once its
log entry is on disk.

Why this layout: the log *is* the checkpoint (base weights + replay = global weights), so the only
thing a crash may lose is work that was not yet logged, and that work is re-done bit-identically
from the seeds. Files:

- header.json: config, base model id and content hash, format version. Written once, atomically
  (temp file, fsync, rename, fsync of the folder), so it is either absent or complete.
- log.bin: the round log, one record per round: <u32 length><u32 crc32><codec.encode_entry bytes>.
- rounds.bin: the runner's per-round records (metrics, evaluations), framed the same way, as JSON.

Appends are written, flushed and fsynced before the caller goes on; the folder is fsynced when a file
is created. A record cut short by a crash (a torn tail) is detected by its length or CRC and cut
off when the store is opened; damage anywhere before the tail is reported, never repaired.

Test hook: ZORBA_CRASH_AT="<point>:<n>" makes the process SIGKILL itself the n-th time (1-based) it
reaches `crash_point(<point>)`. It exists so tests can kill a run at chosen places, mid-write included.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import zlib
from collections import Counter
from pathlib import Path

from zorba import codec
from zorba.errors import UserError
from zorba.protocol import LogEntry

FORMAT = "zorba-state/1"
_FRAME = struct.Struct("<II")
MAX_RECORD = 1 << 30  # a length above this is damage, not a record
_hits: Counter[str] = Counter()


def crash_point(name: str) -> None:
    """SIGKILL this process here when ZORBA_CRASH_AT names this point and hit count (test hook)."""
    spec = os.environ.get("ZORBA_CRASH_AT")
    if not spec:
        return
    point, _, nth = spec.partition(":")
    if point != name:
        return
    _hits[name] += 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so that a crash leaves either the old file or the new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def frame(payload: bytes) -> bytes:
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


class AppendLog:
    """A file of framed records that only grows; `records` are those that were fully written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.exists():
            path.touch()
            fsync_dir(path.parent)
        self.records = self._read_and_cut_torn_tail()

    def _read_and_cut_torn_tail(self) -> list[bytes]:
        data = self.path.read_bytes()
        records, pos = [], 0
        while pos < len(data):
            if pos + _FRAME.size > len(data):
                break  # torn header
            length, crc = _FRAME.unpack_from(data, pos)
            end = pos + _FRAME.size + length
            if length > MAX_RECORD or end > len(data):
                break  # torn payload
            payload = data[pos + _FRAME.size : end]
            if zlib.crc32(payload) != crc:
                if end == len(data):
                    break  # the last record was being written when the process died
                raise UserError(f"{self.path}: record {len(records)} is damaged (checksum mismatch); not resuming")
            records.append(payload)
            pos = end
        if pos < len(data):
            with open(self.path, "r+b") as f:
                f.truncate(pos)
                os.fsync(f.fileno())
        return records

    def append(self, payload: bytes) -> None:
        record = frame(payload)
        with open(self.path, "ab") as f:
            half = len(record) // 2
            f.write(record[:half])
            f.flush()
            crash_point(f"{self.path.stem}-torn")  # lets tests die between the two halves of a write
            f.write(record[half:])
            f.flush()
            os.fsync(f.fileno())
        self.records.append(payload)


class RunStore:
    """The state folder of one run: its header, its durable round log and its per-round records."""

    def __init__(self, folder: Path, header: dict) -> None:
        self.folder, self.header = folder, header
        self._log = AppendLog(folder / "log.bin")
        self._rounds = AppendLog(folder / "rounds.bin")
        self.entries = [_decode_entry(folder, i, raw) for i, raw in enumerate(self._log.records)]
        self.records = [_decode_record(folder, i, raw) for i, raw in enumerate(self._rounds.records)]

    @classmethod
    def create(cls, folder: Path, header: dict) -> RunStore:
        """A new state folder; the header goes in last-to-first safe order (folder, then header)."""
        folder.mkdir(parents=True, exist_ok=False)
        fsync_dir(folder.parent)
        write_atomic(folder / "header.json", json.dumps({"format": FORMAT, **header}, indent=2).encode())
        return cls(folder, {"format": FORMAT, **header})

    @classmethod
    def open(cls, folder: Path) -> RunStore:
        path = folder / "header.json"
        if not path.is_file():
            raise UserError(f"{folder.parent}: no resumable run here (missing {path.name} in {folder.name}/)")
        try:
            header = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{path}: unreadable run header ({type(exc).__name__})") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            got = header.get("format") if isinstance(header, dict) else None
            raise UserError(f"{path}: state format {got!r}, this zorba reads {FORMAT!r}")
        return cls(folder, header)

    def append_entry(self, entry: LogEntry) -> None:
        if entry.round != len(self.entries):
            raise ValueError(f"log entry for round {entry.round}, the durable log has {len(self.entries)}")
        self._log.append(codec.encode_entry(entry))
        self.entries.append(entry)

    def append_record(self, record: dict) -> None:
        self._rounds.append(json.dumps(record, separators=(",", ":")).encode())
        self.records.append(record)


def _decode_entry(folder: Path, i: int, raw: bytes) -> LogEntry:
    try:
        entry = codec.decode_entry(raw)
    except codec.DecodeError as exc:
        raise UserError(f"{folder / 'log.bin'}: entry {i} is not a log entry ({exc})") from None
    if entry.round != i:
        raise UserError(f"{folder / 'log.bin'}: entry {i} is for round {entry.round}")
    return entry


def _decode_record(folder: Path, i: int, raw: bytes) -> dict:
    try:
        record = json.loads(raw)
    except ValueError:
        record = None
    if not isinstance(record, dict):
        raise UserError(f"{folder / 'rounds.bin'}: record {i} is not a JSON object")
    return record
